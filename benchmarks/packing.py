"""Sequence packing (`student.pack_tokens`) against padding: one rank's step time and the
tokens the model computes, on a run's own distillation records.

    python -m benchmarks.packing --run-dir RUN [--model smollm2-135m] [--pack-tokens 512 1024]

RUN is a committed run directory (its `data/` shards are read; for the published numbers,
`cdscale run --config configs/system_prompt_onpolicy.yaml`). Two sets of batches are timed:
the records as they are, and the same records with each response cut at a random length, as
when a model stops on its own (responses of mixed lengths are where padding costs). One
DeepSpeed rank in this process (ZeRO-2, fp32, LoRA r = 16 as in the config), through the
real `StudentTrainer`; median step time after two warm-up steps. Writes packing.json and
packing.md to --out. No assertion on speed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

from benchmarks.student_training import bench_deepspeed
from cdscale.checkpoint import read_shard
from cdscale.student.trainer import collate


def run_records(run_dir: Path) -> list[dict]:
    """Every committed round's and refresh's records of `run_dir`, in order (manifest keys
    are "r" for a round, "r.j" for refresh j of round r)."""
    manifest = json.loads((run_dir / "data" / "manifest.json").read_text())
    records = []
    for key in sorted(manifest, key=lambda k: [int(p) for p in k.split(".")]):
        round_index, *refresh = (int(p) for p in key.split("."))
        records += read_shard(run_dir, round_index, refresh[0] if refresh else None)[0]
    return records


def cut_responses(records: list[dict], seed: int) -> list[dict]:
    """Each record with its response cut after a random number of its tokens (at least one)."""
    rng = random.Random(seed)
    cut = []
    for r in records:
        keep = rng.randint(1, len(r["input_ids"]) - r["answer_start"])
        end = r["answer_start"] + keep
        cut.append({**r, "input_ids": r["input_ids"][:end], "topk_ids": r["topk_ids"][:keep],
                    "topk_logprobs": r["topk_logprobs"][:keep]})  # fmt: skip
    return cut


def computed_tokens(batches: list[list[dict]], pack_tokens: int) -> int:
    return sum(collate(b, 0, pack_tokens)["input_ids"].numel() for b in batches)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--model", default="smollm2-135m", help="a model folder, or smollm2-135m (packaged)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--pack-tokens", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)

    if args.model == "smollm2-135m":
        from cdscale.models.smollm2 import prepare_smollm2

        args.model = prepare_smollm2()
    records = run_records(args.run_dir)
    n = args.batch_size * args.steps
    sets = {"as run": records[:n], "responses cut at random lengths": cut_responses(records[:n], seed=0)}
    results = {}
    for name, chosen in sets.items():
        batches = [chosen[i : i + args.batch_size] for i in range(0, n, args.batch_size)]
        real = sum(len(r["input_ids"]) for r in chosen)
        rows = {}
        for pack in [0, *args.pack_tokens]:
            started = time.perf_counter()
            timed = bench_deepspeed(Path(args.model), batches, "float32", 2, torch.device("cpu"), 16, pack)
            rows[f"pack_tokens={pack}" if pack else "padded"] = {
                "step_s": timed["step_s"],
                "computed_tokens": computed_tokens(batches, pack),
                "real_tokens": real,
                "wall_s": time.perf_counter() - started,
            }
        results[name] = rows
    report = {
        "command": "python -m benchmarks.packing " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d"),
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "packing.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "| records | layout | computed tokens (padding share) | step s | vs padded |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, rows in results.items():
        for layout, row in rows.items():
            padding = 1 - row["real_tokens"] / row["computed_tokens"]
            speedup = rows["padded"]["step_s"] / row["step_s"]
            computed = f"{row['computed_tokens']:,} ({padding:.0%})"
            lines.append(f"| {name} | {layout} | {computed} | {row['step_s']:.2f} | {speedup:.2f}x |")
    (args.out / "packing.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
