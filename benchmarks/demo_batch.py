"""The demo's training step at several batch sizes or rank layouts, alternated in one process
so that the machine's drift (2026-12-06: the same step 25% slower 40 minutes later) falls on
all alike. The trainer ranks are Ray actors with the run's DeepSpeed settings; a layout RxC is
R ranks of C CPUs each (C torch threads), the demo's being 2x1; a variant is a set of config
overrides (another ZeRO stage, say). The records are a finished run's round 0.

    python -m benchmarks.demo_batch RUN_DIR MODEL_DIR [--batches 64,128] [--layouts 2x1,1x2] [--repeats 2]
        [--variants "student.zero_stage=2;student.zero_stage=1"]
"""

import argparse
import random
from itertools import product
from pathlib import Path

import ray

from benchmarks.common import Timer, machine
from cdscale.checkpoint import read_shard
from cdscale.config import load_config
from cdscale.placement import start_local_ray
from cdscale.student.group import TrainerGroup
from cdscale.student.loop import batch_plan

SEQUENCES = 25_600  # per measurement, whatever the batch


def ms_per_step(trainers: TrainerGroup, num_records: int, batch: int, per_call: int) -> float:
    """The mean step time over SEQUENCES sequences, in calls of `per_call` steps as a round
    makes them, after one call of warm-up."""
    plan = batch_plan(num_records, batch, 1, random.Random(batch))[: SEQUENCES // batch + per_call]
    steps = [indices for _, indices in plan]
    trainers.call("train_steps", steps[:per_call], [1e-4] * per_call)
    with Timer() as timed:
        for first in range(per_call, len(steps), per_call):
            chunk = steps[first : first + per_call]
            trainers.call("train_steps", chunk, [1e-4] * len(chunk))
    return timed.seconds / (len(steps) - per_call) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--batches", default="64,128")
    parser.add_argument("--layouts", default="2x1", help="ranks x CPUs per rank, comma-separated")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--variants", default="", help="config overrides to alternate: ';' between variants, ',' within one"
    )
    args = parser.parse_args()
    records, _ = read_shard(args.run_dir, 0)
    start_local_ray(num_cpus=2, include_dashboard=False)
    print(f"{machine()}; {len(records)} records of {args.run_dir}")
    variants = args.variants.split(";")
    try:
        for _ in range(args.repeats):
            for batch, layout, variant in product(map(int, args.batches.split(",")), args.layouts.split(","), variants):
                ranks, cpus = layout.split("x")
                overrides = [
                    f"student.batch_size={batch}",
                    f"student.num_ranks={ranks}",
                    f"student.cpus_per_rank={cpus}",
                    *filter(None, variant.split(",")),
                ]
                cfg = load_config(str(args.run_dir / "config.yaml"), overrides)
                trainers = TrainerGroup.from_config(cfg, str(args.model_dir)).start()
                trainers.call("set_records", ray.put(records))
                ms = ms_per_step(trainers, len(records), batch, cfg.student.steps_per_call)
                epoch = ms * (len(records) // batch) / 1000
                print(f"batch {batch}, {layout} {variant}: {ms:.1f} ms per step, {epoch:.0f} s per epoch", flush=True)
                trainers.kill()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
