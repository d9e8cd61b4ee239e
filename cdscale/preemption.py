"""Stopping at a safe point: SIGTERM (what Slurm sends before the wall time or on
preemption) or a wall-time budget (`run.save_by_s`) asks the driver to stop; the driver
checks between generation chunks and training calls, saves what it has, and exits 0."""

from __future__ import annotations

import signal
import time
from types import FrameType


class Preempted(Exception):
    """Raised at a safe point after a stop was requested; the last committed state is on disk."""


class StopRequest:
    def __init__(self, save_by_s: float | None, started: float) -> None:
        """`started`: the run's start on `time.monotonic()`. Install this after `ray.init`,
        whose driver sets its own SIGTERM handler (one that aborts the process)."""
        self.deadline = None if save_by_s is None else started + save_by_s
        self.reason: str | None = None
        self.previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.reason = "SIGTERM"

    def __call__(self) -> bool:
        """True once a stop was asked for."""
        if self.reason is None and self.deadline is not None and time.monotonic() >= self.deadline:
            self.reason = "run.save_by_s reached"
        return self.reason is not None

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self.previous)
