"""Stopping at a safe point: SIGTERM (what Slurm sends before the wall time or on
preemption), Ctrl-C (SIGINT) or a wall-time budget (`run.save_by_s`) asks the driver to stop;
the driver checks between generation chunks and training calls, saves what it has, and exits
0 (130 after a Ctrl-C, as a shell reports one). A second Ctrl-C stops at once: the last
commit stays as it was."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any


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
        """`started`: the run's start on `time.monotonic()`. `ray.init` sets a SIGTERM
        handler of its own (one that exits the process mid-call): call `install` again after it."""
        self.deadline = None if save_by_s is None else started + save_by_s
        self.reason: str | None = None
        self.previous = signal.getsignal(signal.SIGTERM)
        self.previous_sigint = signal.getsignal(signal.SIGINT)
        self.install()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

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


def raise_if_stopped(stop: Callable[[], bool] | None, stopped: str) -> None:
    """`Preempted(stopped)`, with the stop's reason, when `stop()` says a stop was requested."""
    if stop is not None and stop():
        raise Preempted(stopped, getattr(stop, "reason", None))


def wait_or_stop(
    refs: list[Any], stop: Callable[[], bool] | None, timeout_s: float, stopped: str, num_returns: int = 0
) -> list[Any]:
    """The first `num_returns` of the Ray `refs` to finish (0: all of them), or [] after
    `timeout_s`. Waits in slices of a second, so that a stop request raises
    `Preempted(stopped)` within about a second, not after the wait (model loading at start-up
    takes minutes on a large model). Waiting for all, a ref that failed raises its error as
    soon as it is done, as `ray.get` would: the others may be waiting for it (a rank's peers
    in a collective), and would hide it until the timeout."""
    import ray

    every = not num_returns
    num_returns = num_returns or len(refs)
    deadline, checked = time.monotonic() + timeout_s, set()
    while True:
        raise_if_stopped(stop, stopped)
        left = deadline - time.monotonic()
        if left <= 0:
            return []
        done, _ = ray.wait(refs, num_returns=num_returns, timeout=min(1.0, left))
        if every:
            ray.get([ref for ref in done if ref not in checked])  # small results: start-up answers
            checked.update(done)
        if len(done) == num_returns:
            return done
