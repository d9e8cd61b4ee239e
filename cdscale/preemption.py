"""Stopping at a safe point: SIGTERM (what Slurm sends before the wall time or on
preemption), Ctrl-C (SIGINT) or a wall-time budget (`run.save_by_s`) asks the driver to stop;
the driver checks between generation chunks and training calls, saves what it has, and exits
0 (130 after a Ctrl-C, as a shell reports one). A second Ctrl-C stops at once: the last
commit stays as it was."""

from __future__ import annotations

import signal
import time
from types import FrameType


class Preempted(Exception):
    """Raised at a safe point after a stop was requested; the last committed state is on disk."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason  # StopRequest.reason

    @property
    def exit_code(self) -> int:
        return 130 if self.reason == "SIGINT" else 0


class StopRequest:
    def __init__(self, save_by_s: float | None, started: float) -> None:
        """`started`: the run's start on `time.monotonic()`. Install this after `ray.init`,
        whose driver sets its own SIGTERM handler (one that aborts the process)."""
        self.deadline = None if save_by_s is None else started + save_by_s
        self.reason: str | None = None
        self.previous = signal.signal(signal.SIGTERM, self._on_signal)
        self.previous_sigint = signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.reason == "SIGINT":
            raise KeyboardInterrupt  # the second Ctrl-C
        self.reason = signal.Signals(signum).name

    def __call__(self) -> bool:
        """True once a stop was asked for."""
        if self.reason is None and self.deadline is not None and time.monotonic() >= self.deadline:
            self.reason = "run.save_by_s reached"
        return self.reason is not None

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self.previous)
        signal.signal(signal.SIGINT, self.previous_sigint)
