"""The bootstrap's training step (`cdscale bootstrap`'s model, batch and optimizer) under
several variants, alternated in one process so that the machine's drift falls on all alike:
the attention implementation, bfloat16 autocast of the forward pass (fp32 weights and
AdamW states, as mixed-precision training keeps them), and the tiny Llama's shape (layers x
MLP width). Batches are built before the timing.

    python -m benchmarks.bootstrap_step [--variants sdpa,eager,sdpa+bf16,eager+bf16] [--repeats 2]
        [--shapes 4x512,2x512] [--task-options '{"min_digits": 1, "max_digits": 8, "same_length": true}']
"""

import argparse
import json
import random
import tempfile
from itertools import product
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks.common import Timer, machine
from cdscale.bootstrap import demonstration_batch
from cdscale.models.tiny import build_tiny_llama
from cdscale.tasks import build_task

WARMUP, TIMED = 5, 30


def seconds_per_step(model_dir: Path, variant: str, batches: list[dict]) -> float:
    attention, _, precision = variant.partition("+")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attention)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.98))

    def step(batch: dict) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for batch in batches[:WARMUP]:
        step(batch)
    with Timer() as timed:
        for batch in batches[WARMUP:]:
            step(batch)
    return timed.seconds / TIMED


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", default="sdpa,eager,sdpa+bf16,eager+bf16")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--task-options", default='{"min_digits": 1, "max_digits": 3}')
    parser.add_argument("--shapes", default="2x512", help="LAYERSxMLP_WIDTH,...: the demo's teacher is 2x512")
    args = parser.parse_args()
    task = build_task("addition", json.loads(args.task_options))
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        for shape in args.shapes.split(","):
            layers, width = (int(n) for n in shape.split("x"))
            models[shape] = build_tiny_llama(Path(tmp) / shape, num_layers=layers, intermediate_size=width, seed=0)
        tokenizer = AutoTokenizer.from_pretrained(next(iter(models.values())))
        rng = random.Random(0)
        count = WARMUP + TIMED
        batches = [demonstration_batch([task], tokenizer, args.batch_size, rng, False, None) for _ in range(count)]
        print(f"{machine()}; {torch.get_num_threads()} threads; batch {tuple(batches[0]['input_ids'].shape)}")
        for _ in range(args.repeats):
            for (shape, model_dir), variant in product(models.items(), args.variants.split(",")):
                seconds = seconds_per_step(model_dir, variant, batches)
                print(f"{shape} {variant}: {seconds:.3f} s per step", flush=True)


if __name__ == "__main__":
    main()
