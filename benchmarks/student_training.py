"""Student training benchmark: DeepSpeed ZeRO-1/2/3 against a plain PyTorch AdamW loop on
the same batches, and the ZeRO weight export against an in-memory copy.

Two ways to run it:
- `python -m benchmarks.student_training --out DIR --model smollm2-shape` runs the real
  `StudentTrainer` in this process (one rank, no Ray): the GPU machine's script.
- `run_ranks` (called by `benchmarks/suite.py`) runs the trainers as Ray actors, as a round
  does, with 1 and 2 ranks, and reads each rank's peak memory.
Models are random-initialised Llamas of the named shape (no hub). Every figure is a ratio or
a median taken inside one run; nothing here asserts on speed.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cdscale.config import LoraConfig
from cdscale.student.losses import distillation_loss
from cdscale.student.trainer import StudentTrainer, TrainerSettings, answer_logits, collate, free_port

SHAPES = {
    "small": dict(
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=8192,
    ),
    "smollm2-shape": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
    ),
    "1b-shape": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=49152,
    ),
}


def make_model(shape: str, folder: Path, dtype: str) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=2048, tie_word_embeddings=True)
    LlamaForCausalLM(config).to(getattr(torch, dtype)).save_pretrained(folder, safe_serialization=True)
    return folder


def make_records(n: int, vocab: int, prompt_len: int, answer_len: int, top_k: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        ids = [rng.randrange(vocab) for _ in range(prompt_len + answer_len)]
        topk_ids = [[ids[prompt_len + j]] + rng.sample(range(vocab), top_k) for j in range(answer_len)]
        topk_lps = [
            sorted((-rng.uniform(0.05, 6.0) for _ in range(top_k + 1)), reverse=True) for _ in range(answer_len)
        ]
        records.append({"input_ids": ids, "answer_start": prompt_len, "topk_ids": topk_ids, "topk_logprobs": topk_lps})
    return records


def sync_time(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def bench_plain(model_dir: Path, batches: list[list[dict]], dtype: str, device: torch.device) -> dict:
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for records in batches:
        start = sync_time(device)
        batch = {k: v.to(device) for k, v in collate(records, 0).items()}
        logits = answer_logits(model, batch)
        distillation_loss(
            "forward_kl_topk", logits, batch["target_ids"], batch["topk_ids"], batch["topk_logprobs"]
        ).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(sync_time(device) - start)
    state_start = sync_time(device)
    copied = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    copy_s = sync_time(device) - state_start
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    del model, optimizer
    return {
        "step_s": statistics.median(times[2:]),
        "copy_state_s": copy_s,
        "bytes": sum(v.numel() * v.element_size() for v in copied.values()),
        "peak_bytes": peak,
    }


def bench_deepspeed(
    model_dir: Path,
    batches: list[list[dict]],
    dtype: str,
    stage: int,
    device: torch.device,
    lora_rank: int = 0,
    pack_tokens: int = 0,
) -> dict:
    """One rank's step time, the full-weight export (merged, for a LoRA student), and with
    `lora_rank` the adapter export too; peak GPU memory. `pack_tokens`: `student.pack_tokens`."""
    ds_config = {
        "train_batch_size": len(batches[0]),
        "train_micro_batch_size_per_gpu": len(batches[0]),
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": dtype == "bfloat16"},
        "steps_per_print": 10**9,
    }
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    lora = LoraConfig(r=lora_rank, alpha=2.0 * lora_rank) if lora_rank else None
    trainer = StudentTrainer(
        0,
        1,
        TrainerSettings(str(model_dir), dtype, lr=1e-4, timeout_s=600.0, lora=lora, pack_tokens=pack_tokens),
        ds_config,
    )
    parameters = trainer.setup("127.0.0.1", free_port())
    times = []
    for records in batches:
        start = sync_time(device)
        trainer.train_step(records, 1e-4)
        times.append(sync_time(device) - start)
    start = sync_time(device)
    exported = trainer.export_weights()
    export_s = sync_time(device) - start
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    adapter = {}
    if lora_rank:
        start = sync_time(device)
        packed, _ = trainer.export_adapter()
        adapter = {"adapter_export_s": sync_time(device) - start, "adapter_bytes": packed.nbytes}
    trainer.engine.destroy()
    del trainer
    return {
        "step_s": statistics.median(times[2:]),
        "export_s": export_s,
        "export_bytes": exported.nbytes,
        "peak_bytes": peak,
        **parameters,
        **adapter,
    }


def run_ranks(
    model_dir: Path, records: list[dict], batch_size: int, steps: int, stages: list[int], ranks: list[int]
) -> dict:
    """Tokens/s and peak memory per rank of ZeRO stages x rank counts, the trainers as Ray
    actors (one CPU each on CPU), against the plain loop with as many threads as ranks."""

    from cdscale.config import load_config
    from cdscale.student.group import TrainerGroup

    batches = [records[i * batch_size : (i + 1) * batch_size] for i in range(steps)]
    tokens_per_step = sum(len(r["input_ids"]) for r in batches[0])
    rows = {}
    for n in ranks:
        torch.set_num_threads(n)
        plain = bench_plain(model_dir, batches, "float32", torch.device("cpu"))
        rows[f"plain_adamw_{n}_threads"] = {
            "tokens_per_s": tokens_per_step / plain["step_s"],
            "step_s": plain["step_s"],
        }
        for stage in stages:
            cfg = load_config(
                None,
                [
                    f"model.path={model_dir}",
                    f"student.num_ranks={n}",
                    f"student.zero_stage={stage}",
                    f"student.batch_size={batch_size}",
                    "student.lr=1e-4",
                ],
            )
            group = TrainerGroup.from_config(cfg, str(model_dir)).start()
            try:
                group.call("set_records", records)
                plan = [list(range(i * batch_size, (i + 1) * batch_size)) for i in range(steps)]
                times = []
                for step in plan:  # one step per call, so each can be timed; the first is warm-up
                    start = time.perf_counter()
                    group.call("train_steps", [step], [1e-4])  # each rank takes its share of the global batch
                    times.append(time.perf_counter() - start)
                memory = group.call("memory_stats")
            finally:
                group.kill()
            step_s = statistics.median(times[1:])
            rows[f"zero{stage}_{n}_ranks"] = {
                "tokens_per_s": tokens_per_step / step_s,
                "step_s": step_s,
                "vs_plain": plain["step_s"] / step_s,
                "peak_bytes_per_rank": max(m["peak_bytes"] for m in memory),
                "model_bytes_per_rank": max(m["peak_bytes"] - m["base_bytes"] for m in memory),
            }
    return {"tokens_per_step": tokens_per_step, "steps": steps, "batch_size": batch_size, "rows": rows}


def ranks_table(results: dict[str, dict]) -> str:
    lines = [
        (
            "| model | path | tokens/s | vs plain AdamW (same cores) | peak RSS per rank GiB "
            "| of which model, optimizer, activations GiB |"
        ),
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for model, r in results.items():
        for name, row in r["rows"].items():
            vs = f"{row['vs_plain']:.2f}x" if "vs_plain" in row else "1.00x"
            peak = f"{row['peak_bytes_per_rank'] / 2**30:.2f}" if "peak_bytes_per_rank" in row else "-"
            model_mem = f"{row['model_bytes_per_rank'] / 2**30:.2f}" if "model_bytes_per_rank" in row else "-"
            lines.append(f"| {model} | {name} | {row['tokens_per_s']:,.0f} | {vs} | {peak} | {model_mem} |")
    first = next(iter(results.values()))
    note = (
        f"fp32, batch {first['batch_size']} sequences ({first['tokens_per_step']} tokens) per step, "
        f"median of {first['steps'] - 1} steps after a warm-up step; each rank is a Ray actor with one CPU."
    )
    return note + "\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--model", default="small", choices=list(SHAPES))
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=192)
    parser.add_argument("--answer-len", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--stages", default="1,2,3")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    vocab = SHAPES[args.model]["vocab_size"]
    records = make_records(args.batch_size * args.steps, vocab, args.prompt_len, args.answer_len, 20, 0)
    batches = [records[i * args.batch_size : (i + 1) * args.batch_size] for i in range(args.steps)]
    tokens_per_step = args.batch_size * (args.prompt_len + args.answer_len)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model(args.model, Path(tmp) / "model", args.dtype)
        plain = bench_plain(model_dir, batches, args.dtype, device)
        rows = {"plain_adamw": plain}
        for stage in map(int, args.stages.split(",")):
            rows[f"zero{stage}"] = bench_deepspeed(model_dir, batches, args.dtype, stage, device)
    result = {
        "device": device_name,
        "model": args.model,
        "dtype": args.dtype,
        "tokens_per_step": tokens_per_step,
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    lines = [
        f"Student training on {device_name}, model {args.model} ({args.dtype}), {tokens_per_step} tokens/step, 1 rank",
        "",
        "| path | tokens/s | vs plain AdamW | peak GiB | export s (vs in-memory copy) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in rows.items():
        tps = tokens_per_step / row["step_s"]
        ratio = plain["step_s"] / row["step_s"]
        peak = f"{row['peak_bytes'] / 2**30:.2f}" if row["peak_bytes"] else "n/a"
        export = (
            f"{row['export_s']:.3f} ({row['export_s'] / plain['copy_state_s']:.1f}x)"
            if "export_s" in row
            else f"{plain['copy_state_s']:.3f} (copy)"
        )
        lines.append(f"| {name} | {tps:,.0f} | {ratio:.2f}x | {peak} | {export} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"student_training_{args.model}.json").write_text(json.dumps(result, indent=2))
    (args.out / f"student_training_{args.model}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
