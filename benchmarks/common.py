"""What every benchmark script shares: a wall-clock timer, a description of the machine, and
the engines' start-up."""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import torch


class Timer:
    """`with Timer() as t: ...` then `t.seconds` (CUDA work is waited for)."""

    def __enter__(self) -> "Timer":
        self._sync()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self.start

    @staticmethod
    def _sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()


def machine() -> str:
    """One line naming the machine a figure was measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return f"{os.cpu_count()} CPUs ({cpu}){gpu}, torch {torch.__version__}"


class Engines:
    """Starts the benchmarks' engine actors (one CPU each). By default `release` stops them, so
    each benchmark has the cores to itself. With `share` (the smoke run, where an engine's
    start-up costs far more than what it measures), engines of equal settings are started once
    and handed to every benchmark that asks for them. `close` stops every engine still running."""

    def __init__(self, share: bool = False) -> None:
        self.share = share
        self.running: list[Any] = []
        self.shared: dict[str, Any] = {}

    def start(self, num_engines: int, **settings: Any) -> Any:
        """An `EngineGroup` of `num_engines` engines started with `EngineSettings(**settings)`."""
        from cdscale.teacher.engine import EngineSettings
        from cdscale.teacher.group import EngineGroup

        key = repr((num_engines, sorted(settings.items())))
        if self.share and key in self.shared:
            return self.shared[key]
        engines = EngineGroup(EngineSettings(**settings), timeout_s=3600).start(num_engines)
        self.running.append(engines)
        if self.share:
            self.shared[key] = engines
        return engines

    def release(self, engines: Any) -> None:
        if not self.share:
            self.running = [e for e in self.running if e is not engines]
            engines.kill()

    def close(self) -> None:
        for engines in self.running:
            engines.kill()
        self.running, self.shared = [], {}
