"""The one-GPU check: full fine-tuning against a LoRA student (rank 16 on every linear layer)
of a 1.2B-shape Llama (random weights, no hub) under DeepSpeed ZeRO-2 on one GPU, through the
real `StudentTrainer`: tokens/s, peak memory, and the export a weight sync starts from (full
weights, merged for LoRA, against the adapter alone). Needs torch, transformers, peft and
DeepSpeed only (no Ray, no vLLM); a few minutes on an H200.

    python -m benchmarks.gpu_check --out DIR     # DIR/gpu_check.{json,md}

On a GPU machine without cdscale's install, `PYTHONPATH=<this checkout>` and DeepSpeed with
its pure-Python needs (hjson, pydantic) are enough: the trainer does not import Ray.

Copy the table into docs/performance.md with the date whenever a GPU machine runs it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import machine
from benchmarks.student_training import SHAPES, bench_deepspeed, make_model, make_records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shape", default="1b-shape", choices=list(SHAPES))
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=448)
    parser.add_argument("--answer-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    records = make_records(
        args.batch_size * args.steps, SHAPES[args.shape]["vocab_size"], args.prompt_len, args.answer_len, 20, 0
    )
    batches = [records[i * args.batch_size : (i + 1) * args.batch_size] for i in range(args.steps)]
    tokens_per_step = args.batch_size * (args.prompt_len + args.answer_len)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model(args.shape, Path(tmp) / "model", dtype)
        for name, rank in (("full", 0), (f"lora r={args.rank}", args.rank)):
            rows[name] = bench_deepspeed(model_dir, batches, dtype, 2, device, lora_rank=rank)
            rows[name]["tokens_per_s"] = tokens_per_step / rows[name]["step_s"]
    lines = [
        f"`python -m benchmarks.gpu_check` on {machine()}, {time.strftime('%Y-%m-%d')}: {args.shape} ({dtype}), "
        f"ZeRO-2, one rank, {tokens_per_step} tokens per step ({args.batch_size} sequences), "
        f"median of {args.steps - 2} steps after 2 warm-up steps.",
        "",
        "| student | trainable / all parameters | tokens/s | peak GiB | full export s (MB) | adapter export s (MB) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in rows.items():
        peak = f"{r['peak_bytes'] / 2**30:.2f}" if r["peak_bytes"] else "n/a (CPU)"
        adapter = f"{r['adapter_export_s']:.3f} ({r['adapter_bytes'] / 1e6:.1f})" if "adapter_bytes" in r else "-"
        lines.append(
            f"| {name} | {r['trainable'] / 1e6:,.1f}M / {r['total'] / 1e6:,.1f}M | {r['tokens_per_s']:,.0f} | {peak} "
            f"| {r['export_s']:.3f} ({r['export_bytes'] / 1e6:,.0f}) | {adapter} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    (args.out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
