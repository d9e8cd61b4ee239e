"""The side-by-side table: TRL SDFT runs (`trl_sdft.py --out`) and cdscale runs (run folders),
on the same task and budget. Prints markdown: one row per run, then the time each tool took to
first reach each accuracy in `--at`.

    python benchmarks/peers/side_by_side.py --trl /tmp/peer/trl_on_768.json \\
        --cdscale /tmp/cdscale_runs/matched_off /tmp/cdscale_runs/matched_off_256 --at 0.05 0.10

Times (seconds):
- TRL: `trainer.train()` without its periodic evaluations; the model load before it is not
  counted. Reaching an accuracy: the first periodic evaluation at or above it, so one run gives
  a curve.
- cdscale: the whole `cdscale run` (`timings.total` of summary.json: Ray and engine start-up,
  teacher generation, targets, training, sync, checkpoints) without its evaluations. A run
  with `eval.every_refreshes` gives a curve (summary.json's `curve`); without, it evaluates at
  the end of a round only, and reaching an accuracy is the shortest run that ends at or above
  it: an upper bound, from one run per budget.
Give it runs of one machine and one seed where it times an accuracy: TRL's accuracy after the
same steps moved from 5% to 68% between seeds on the H200 (benchmarks/results/trl_sdft.md).
Runs only on the standard library: run it with any Python.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def trl_row(path: Path) -> dict:
    d = json.loads(path.read_text())
    args = d["args"]
    return {
        "tool": f"TRL SDFT {d['versions'].get('trl', '?')}",
        "mode": args["mode"],
        "seed": args.get("seed", 0),
        "steps": args["steps"],
        "examples": d["completions_trained"],
        "seconds": d["train_seconds"],
        "accuracy": d["student_accuracy_after"],
        # The final evaluation is the curve's last point when --eval-every divides --steps.
        "curve": [(p["train_seconds"], p["student_accuracy"]) for p in d["accuracy_curve"]]
        + [(d["train_seconds"], d["student_accuracy_after"])],
        "source": str(path),
    }


def cdscale_row(run_dir: Path) -> dict:
    import yaml  # noqa: PLC0415  (PyYAML: in cdscale's venv and TRL's)

    summary = json.loads((run_dir / "summary.json").read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    round_0, timings = summary["round_0"], summary["timings"]
    seconds = timings["total"] - timings.get("eval", 0.0)
    op, after = next(iter(summary["student_after"].items()))
    accuracy = after["accuracy"]
    during = [(p["seconds"], p["accuracy"]) for p in summary.get("curve", {}).get(op, [])]  # eval.every_refreshes
    source = config["data"]["source"]
    refresh = config["data"].get("refresh_every_steps") or 0
    return {
        "tool": "cdscale",
        "mode": {"teacher": "off_policy", "student": "on_policy"}.get(source, source)
        + (f", refresh {refresh}" if refresh else ""),
        "seed": config["data"].get("seed", 0),
        "steps": round_0["steps"],
        "examples": round_0["steps"] * config["student"]["batch_size"],
        "seconds": seconds,
        "accuracy": accuracy,
        "curve": [*during, (seconds, accuracy)],
        "source": str(run_dir),
        "generate_s": timings.get("generate", 0.0),
        "train_s": timings.get("train", 0.0),
    }


def first_reach(rows: list[dict], at: float) -> tuple[float, str] | None:
    """The shortest time at which any of these runs showed accuracy >= at, and which run."""
    hits = [(s, row["source"]) for row in rows for s, acc in row["curve"] if acc >= at]
    return min(hits) if hits else None


def across_seeds(rows: list[dict]) -> dict[tuple[str, str, int], list[float]]:
    """The accuracies after the same steps of each (tool, mode, steps), one per run (seed)."""
    groups: dict[tuple[str, str, int], list[float]] = {}
    for r in rows:
        groups.setdefault((r["tool"], r["mode"], r["steps"]), []).append(r["accuracy"])
    return groups


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trl", nargs="*", default=[], type=Path, help="trl_sdft.py --out JSON files")
    p.add_argument("--cdscale", nargs="*", default=[], type=Path, help="cdscale run folders")
    p.add_argument("--at", nargs="*", default=[], type=float, help="accuracies to time (fractions)")
    args = p.parse_args()
    rows = [trl_row(f) for f in args.trl] + [cdscale_row(d) for d in args.cdscale]
    print("| tool | mode | seed | steps | examples | seconds | examples/s | accuracy after | run |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['tool']} | {r['mode']} | {r['seed']} | {r['steps']} | {r['examples']} | {r['seconds']:.0f} | "
            f"{r['examples'] / r['seconds']:.0f} | {100 * r['accuracy']:.1f}% | `{r['source']}` |"
        )
    groups = across_seeds(rows)
    if any(len(accs) > 1 for accs in groups.values()):
        print("\n| tool | mode | steps | runs | accuracy after: mean (min-max) |")
        print("| --- | --- | --- | --- | --- |")
        for (tool, mode, steps), accs in groups.items():
            mean, low, high = (100 * v for v in (sum(accs) / len(accs), min(accs), max(accs)))
            print(f"| {tool} | {mode} | {steps} | {len(accs)} | {mean:.1f}% ({low:.1f}-{high:.1f}) |")
    if not args.at:
        return
    print("\n| accuracy | TRL first reached it at (s) | cdscale reached it by (s) | TRL / cdscale |")
    print("| --- | --- | --- | --- |")
    for at in args.at:
        trl = first_reach([r for r in rows if r["tool"] != "cdscale"], at)
        ours = first_reach([r for r in rows if r["tool"] == "cdscale"], at)
        ratio = f"{trl[0] / ours[0]:.2f}x" if trl and ours else "-"
        shown = [f"{t[0]:.0f} (`{Path(t[1]).name}`)" if t else "not reached" for t in (trl, ours)]
        print(f"| {100 * at:.1f}% | {shown[0]} | {shown[1]} | {ratio} |")


if __name__ == "__main__":
    main()
