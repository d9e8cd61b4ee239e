"""Round breakdown: the wall time of a whole `cdscale run` split into its phases (input
sampling, start-up, generation, target building, training, sync, evaluation, checkpointing)
and the rest, "overhead", as the driver's `PhaseClock` records it in summary.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cdscale.config import load_config
from cdscale.distillation import run as run_cdscale


def run(model_path: str, out_dir: Path, overrides: list[str]) -> dict[str, Any]:
    cfg = load_config(
        None, [f"model.path={model_path}", f"run.output_root={out_dir}", "run.name=round_breakdown", *overrides]
    )
    summary = run_cdscale(cfg)
    split = summary["timings"]
    return {
        "overrides": overrides,
        "seconds": split,
        "kept": summary["round_0"]["kept"],
        "steps": summary["round_0"]["steps"],
        "overhead_fraction": split["overhead"] / split["total"],
    }


def table(result: dict[str, Any]) -> str:
    split = result["seconds"]
    lines = ["| phase | seconds | share |", "| --- | --- | --- |"]
    for phase, seconds in split.items():
        if phase != "total":
            lines.append(f"| {phase} | {seconds:.1f} | {100 * seconds / split['total']:.1f}% |")
    lines.append(f"| **total** | {split['total']:.1f} | 100% |")
    note = (
        f"One `cdscale run` ({result['kept']} distillation examples, {result['steps']} steps) with "
        f"`{' '.join(result['overrides'])}`. Overhead target: at most 10% of the run: "
        f"{'met' if result['overhead_fraction'] <= 0.10 else 'MISSED'} ({100 * result['overhead_fraction']:.1f}%)."
    )
    return note + "\n\n" + "\n".join(lines)
