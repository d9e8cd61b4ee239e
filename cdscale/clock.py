"""Where a run's wall time goes."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator


class PhaseClock:
    """Wall time of a run split into its phases (summed over rounds); the time no phase
    covers is reported as "overhead", so the split always adds up to the whole run."""

    PHASES = ("startup", "sample_inputs", "generate", "targets", "train", "sync", "eval", "checkpoint")

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds = dict.fromkeys(self.PHASES, 0.0)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start

    def split(self) -> dict[str, float]:
        total = time.perf_counter() - self.start
        return {**self.seconds, "overhead": total - sum(self.seconds.values()), "total": total}
