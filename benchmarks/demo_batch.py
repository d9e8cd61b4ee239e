"""The demo's training step at two batch sizes, alternated in one process so that the
machine's drift (2026-12-06: the same step 25% slower 40 minutes later) falls on both alike.
The trainer ranks are the demo's (2 ranks, ZeRO-2, one CPU each, as Ray actors); the records
are a finished run's round 0.

    python -m benchmarks.demo_batch RUN_DIR MODEL_DIR [--batches 64,128] [--repeats 2]
"""

import argparse
import random
import time
from pathlib import Path

import ray

from benchmarks.common import machine
from cdscale.checkpoint import read_shard
from cdscale.config import load_config
from cdscale.placement import start_local_ray
from cdscale.student.group import TrainerGroup

SEQUENCES = 25_600  # per measurement, whatever the batch


def ms_per_step(trainers: TrainerGroup, num_records: int, batch: int) -> float:
    order = list(range(num_records))
    random.Random(batch).shuffle(order)
    steps = [order[i * batch : (i + 1) * batch] for i in range(SEQUENCES // batch + 25)]
    trainers.call("train_steps", steps[:25], [1e-4] * 25)  # warm-up
    start = time.perf_counter()
    for first in range(25, len(steps), 25):
        trainers.call("train_steps", steps[first : first + 25], [1e-4] * 25)
    return (time.perf_counter() - start) / (len(steps) - 25) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--batches", default="64,128")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    records, _ = read_shard(args.run_dir, 0)
    start_local_ray(num_cpus=2, include_dashboard=False)
    print(f"{machine()}; {len(records)} records of {args.run_dir}")
    try:
        for _ in range(args.repeats):
            for batch in map(int, args.batches.split(",")):
                cfg = load_config(str(args.run_dir / "config.yaml"), [f"student.batch_size={batch}"])
                trainers = TrainerGroup.from_config(cfg, str(args.model_dir)).start()
                trainers.call("set_records", ray.put(records))
                ms = ms_per_step(trainers, len(records), batch)
                epoch = ms * (len(records) // batch) / 1000
                print(f"batch {batch}: {ms:.1f} ms per step, {epoch:.0f} s per epoch", flush=True)
                trainers.kill()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
