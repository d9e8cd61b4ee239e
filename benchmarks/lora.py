"""Full fine-tuning against a LoRA student, on the same model, ranks and engine: trainable
parameters, a training step's time and each rank's peak memory, the weight sync (full
weights through the object store against the adapter alone), and a commit's trainer state.

    python -m benchmarks.lora [--model smollm2-135m] [--rank 16] [--bf16] [--out benchmarks/results]

`--bf16` adds full and LoRA rows with `model.dtype: bfloat16` (DeepSpeed's bf16 mode: fp32
master weights and optimizer states, bf16 forward and backward), for CPUs with bf16 kernels.

Writes lora.json and lora.md. Synthetic records (random tokens, 24 answer positions each,
random top-k targets): what is timed is the work, not what is learned.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import ray

from benchmarks.common import Timer, machine
from benchmarks.student_training import make_records
from cdscale.config import load_config
from cdscale.models import resolve_model_path
from cdscale.student.group import TrainerGroup
from cdscale.sync import make_weight_sync
from cdscale.teacher.engine import EngineSettings
from cdscale.teacher.group import EngineGroup

SEQ, ANSWER, TOP_K, BATCH, STEPS, SYNCS = 128, 24, 20, 8, 4, 3


def measure(
    model: str, lora_rank: int, ranks: int, checkpointing: bool = False, dtype: str = "float32"
) -> dict[str, Any]:
    cfg = load_config(
        None,
        [
            f"model.path={model}",
            f"model.dtype={dtype}",
            f"student.num_ranks={ranks}",
            f"student.batch_size={BATCH}",
            f"student.lora.r={lora_rank}",
            f"student.lora.alpha={2 * max(lora_rank, 1)}",
            f"student.gradient_checkpointing={checkpointing}",
        ],
    )
    path = resolve_model_path(model)
    engines = EngineGroup(EngineSettings.from_config(cfg, path), timeout_s=3600).start(1)
    group = TrainerGroup.from_config(cfg, path).start()
    sync = make_weight_sync(cfg)
    try:
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(path).vocab_size
        data = make_records(BATCH * STEPS, vocab, SEQ - ANSWER, ANSWER, TOP_K, seed=0)
        step_s = []
        for step in range(STEPS):
            batch = data[step * BATCH : (step + 1) * BATCH]
            with Timer() as t:
                ray.get([a.train_step.remote(batch[r::ranks], 1e-4) for r, a in enumerate(group.actors)])
            step_s.append(t.seconds)
        memory = group.call("memory_stats")
        syncs = [sync.push(group.actors, engines.engines, version)[0] for version in range(1, SYNCS + 2)][1:]
        # What a second engine group for the student would add: one more engine like this one.
        engine_peak = ray.get(engines.engines[0].__ray_call__.remote(lambda _: _peak_rss_bytes()))
        with tempfile.TemporaryDirectory() as folder:
            with Timer() as t:
                group.call("save_state", folder)
            state_bytes = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
    finally:
        engines.kill()
        group.kill()
    return {
        "parameters": group.parameters["total"],
        "trainable": group.parameters["trainable"],
        "step_s": statistics.median(step_s[1:]),  # the first step is a warm-up
        "peak_rank_bytes": max(m["peak_bytes"] - m["base_bytes"] for m in memory),
        "sync": syncs[0].transport,
        "sync_s": statistics.median(s.seconds for s in syncs),
        "sync_bytes": syncs[0].bytes,
        "save_state_s": t.seconds,
        "engine_peak_bytes": engine_peak,
        "state_bytes": state_bytes,
    }


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def table(results: dict[str, dict[str, Any]], rank: int) -> str:
    lines = [
        "| student | trainable / all parameters | step s | peak per rank GB | sync | sync MB | sync s "
        "| trainer state MB | save s | engine peak GB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['trainable'] / 1e6:.2f}M / {r['parameters'] / 1e6:.1f}M | {r['step_s']:.2f} "
            f"| {r['peak_rank_bytes'] / 1e9:.2f} | {r['sync']} | {r['sync_bytes'] / 1e6:.2f} | {r['sync_s']:.3f} "
            f"| {r['state_bytes'] / 1e6:.1f} | {r['save_state_s']:.2f} | {r['engine_peak_bytes'] / 1e9:.2f} |"
        )
    full, lora = results["full"], results[f"lora r={rank}"]
    lines.append(
        f"\nsync {full['sync_s'] / lora['sync_s']:.0f}x shorter and {full['sync_bytes'] / lora['sync_bytes']:.0f}x "
        f"fewer bytes with the adapter; trainer state {full['state_bytes'] / lora['state_bytes']:.0f}x smaller."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--ranks", type=int, default=2, help="DeepSpeed ranks (ZeRO-2)")
    parser.add_argument("--bf16", action="store_true", help="also full and LoRA in bfloat16")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    ray.init(num_cpus=1 + args.ranks, include_dashboard=False, log_to_driver=False)
    try:
        results = {
            "full": measure(args.model, 0, args.ranks),
            f"lora r={args.rank}": measure(args.model, args.rank, args.ranks),
            f"lora r={args.rank}, gradient checkpointing": measure(args.model, args.rank, args.ranks, True),
        }
        if args.bf16:
            results["full, bfloat16"] = measure(args.model, 0, args.ranks, dtype="bfloat16")
            results[f"lora r={args.rank}, bfloat16"] = measure(args.model, args.rank, args.ranks, dtype="bfloat16")
    finally:
        ray.shutdown()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lora.json").write_text(
        json.dumps({"machine": machine(), "model": args.model, "results": results}, indent=2)
    )
    text = (
        f"# Full fine-tuning against LoRA\n\n`python -m benchmarks.lora --model {args.model} --rank {args.rank}"
        f"{' --bf16' if args.bf16 else ''}` on "
        f"{machine()}: {args.ranks} ranks (ZeRO-2), one engine, {STEPS} steps of {BATCH} sequences of {SEQ} tokens "
        f"({ANSWER} answer positions), median of {SYNCS} syncs after a warm-up.\n\n{table(results, args.rank)}\n"
    )
    (out / "lora.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
