"""CPU-seconds of a command by kind of process: Ray's daemons, its actors (by class), idle
workers, `cdscale run` drivers, pytest. What a stack test's cost is made of, where the cgroup
count of `make test` gives only its total.

    python -m benchmarks.process_cpu -- python -m pytest -q tests/test_lora.py -k sigkill

Every process that starts after the command does is sampled from /proc every half second,
whatever its parent (Ray's daemons are not the command's descendants once their parent
exits); each sample's CPU counts under the kind the process has at that sample, and a process
that ends between two samples loses its last half second. Processes of other commands that
start meanwhile count too: run it on an otherwise idle machine. Ray renames a worker when an
actor starts in it, so a worker's imports before that count as `ray::IDLE`.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time

TICKS = os.sysconf("SC_CLK_TCK")
KINDS = (
    "raylet",
    "gcs_server",
    "log_monitor",
    "dashboard/agent",
    "dashboard.py",
    "runtime_env/agent",
    "monitor.py",
    "cdscale.cli",
    "pytest",
    "slurm",
)


def kind(cmdline: str, comm: str) -> str:
    if cmdline.startswith("ray::"):
        return cmdline.split()[0].split(".")[0]
    return next((k for k in KINDS if k in cmdline), comm)


def snapshot() -> dict[tuple[str, str], tuple[str, float]]:
    """{(pid, start time): (kind, CPU-seconds so far)} of every process."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline") as f:
                cmdline = f.read().replace("\0", " ").strip()
        except OSError:  # gone
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
        found[(pid, fields[19])] = (kind(cmdline, stat[stat.index("(") + 1 : stat.rindex(")")]), cpu)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", type=float, default=10.0, help="seconds per row of the timeline")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="after --: the command to measure")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    before = set(snapshot())  # processes already running are not the command's
    seen: dict[tuple[str, str], float] = {}  # CPU-seconds at the last sample
    began = time.monotonic()
    proc = subprocess.Popen(command)
    total: collections.Counter[str] = collections.Counter()
    timeline: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    while proc.poll() is None:
        time.sleep(0.5)
        row = int((time.monotonic() - began) // args.bin)
        for key, (k, cpu) in snapshot().items():
            if key in before:
                continue
            spent = cpu - seen.get(key, 0.0)
            total[k] += spent
            timeline[row][k] += spent
            seen[key] = cpu
    print(f"\n{command[0]} exited {proc.returncode} after {time.monotonic() - began:.0f} s")
    for k, cpu in total.most_common():
        if cpu >= 0.5:
            print(f"{cpu:8.1f} CPU-s  {k}")
    print(f"{sum(total.values()):8.1f} CPU-s in all")
    top = [k for k, _ in total.most_common(6)]
    print(f"\nper {args.bin:.0f} s: " + " | ".join(top))
    for row in sorted(timeline):
        print(f"{row * args.bin:6.0f} s " + " ".join(f"{timeline[row][k]:6.1f}" for k in top))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
