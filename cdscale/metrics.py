"""What a run reports while it runs.

Every event goes to metrics.jsonl in the run directory (the record `cdscale report` reads).
The headline numbers of an event also go to TensorBoard event files (run_dir/tensorboard)
and to Ray's metrics as gauges named cdscale_*: the Ray dashboard's Metrics view and each
node's Prometheus endpoint show them while the run goes on.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import IO, Any

import ray

# Per event: field -> metric. The metric is the TensorBoard tag; with "/" as "_" and a
# "cdscale_" prefix it is the Ray gauge.
HEADLINES: dict[str, dict[str, str]] = {
    "round_start": {"round": "progress/round", "stage_index": "progress/stage"},
    "targets": {"generate_tokens_per_s": "generate/tokens_per_s", "kept": "targets/kept"},
    "train": {"loss": "train/loss", "lr": "train/lr", "token_accuracy": "train/token_accuracy"},
    "train_summary": {"train_tokens_per_s": "train/tokens_per_s"},
    "sync": {"seconds": "sync/seconds", "version": "sync/weight_version"},
    "eval": {"accuracy": "eval/accuracy"},
}
GAUGE_TAGS = ("run", "operation", "name")


def gauge_name(metric: str) -> str:
    return "cdscale_" + metric.replace("/", "_")


def parse_event(line: str) -> dict[str, Any] | None:
    """A metrics.jsonl line as its event; None for a line that is not a JSON object (one cut
    short by a crash, or damaged), which is kept or dropped like any other."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _event(line: str) -> Any:
    """The "event" field of a metrics.jsonl line (None for a line that is not an event)."""
    record = parse_event(line)
    return None if record is None else record.get("event")


def committed_lines(lines: list[str], state: str | None = None) -> list[str]:
    """The lines of metrics.jsonl that a restart from committed state `state` keeps: those up
    to and including its "commit" event (the last commit event, for a state that has none);
    without a state (the run starts again from the beginning), those before the first "train"
    event. The rest describe undone work, a commit that died before its state was whole among it."""
    events = [_event(line) for line in lines]
    commits = [i for i, event in enumerate(events) if event == "commit"]
    own = [i for i in commits if state is not None and json.loads(lines[i]).get("state") == state]
    if state is not None and (own or commits):
        return lines[: (own or commits)[-1] + 1]
    return lines[: events.index("train")] if "train" in events else lines


class MetricsLog:
    """metrics.jsonl (a new run starts it afresh, a resumed one keeps what its last commit
    covers: `rollback`), TensorBoard and Ray gauges. Close it, or use it as a context manager."""

    # Lines end in "\n" only (newline="\n"), and bytes that are not UTF-8 pass through unchanged.
    _TEXT = {"encoding": "utf-8", "errors": "surrogateescape", "newline": "\n"}

    def __init__(self, run_dir: Path, append: bool = False, state: str | None = None) -> None:
        """`append`: a resumed run, which goes on from committed state `state` (a folder name)."""
        self.path = run_dir / "metrics.jsonl"
        self.run_name = run_dir.name
        self.tensorboard_dir = run_dir / "tensorboard"
        self.gauges: dict[str, Any] = {}
        self.file: IO[str] | None = None
        self.closed = False
        if append and self.path.exists():
            # A resumed run goes on from its last commit: what came after it is undone.
            self.rollback(state)
        else:
            self.path.write_text("")
            self._open(train_steps=0)

    def _open(self, train_steps: int) -> None:
        """Append to metrics.jsonl; TensorBoard's train steps count on from `train_steps`."""
        from torch.utils.tensorboard import SummaryWriter

        self.train_steps = train_steps
        self.file = open(self.path, "a", **self._TEXT)
        self.tensorboard = SummaryWriter(str(self.tensorboard_dir), flush_secs=10)

    def _close_outputs(self) -> None:
        if self.file is not None:
            self.tensorboard.close()
            self.file.close()
            self.file = None

    def rollback(self, state: str | None) -> int:
        """Drop the events after the commit of `state` (`committed_lines`), which a restart
        from it undoes, so that metrics.jsonl and TensorBoard's train step count match the state
        the run goes on from. Rewrites the file atomically, appends {"event": "rollback",
        "dropped": n} and returns n. Call it before writing any event about the restart."""
        if self.closed:
            raise ValueError(f"{self.path}: rollback of a closed MetricsLog")
        self._close_outputs()
        with open(self.path, **self._TEXT) as f:
            lines = list(f)
        kept = committed_lines(lines, state)
        # Not checkpoint.write_text_atomic: its default text mode would not pass a bad line's bytes through.
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", **self._TEXT) as f:
            f.writelines(line if line.endswith("\n") else line + "\n" for line in kept)  # a cut line stays one line
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        # The steps already on the curves are those of the train events kept.
        self._open(train_steps=sum(_event(line) == "train" for line in kept))
        self.write(event="rollback", dropped=len(lines) - len(kept))
        return len(lines) - len(kept)

    def write(self, **event: Any) -> None:
        self.file.write(json.dumps({"time": time.time(), **event}) + "\n")
        self.file.flush()
        kind = event["event"]
        if kind == "train":
            step, self.train_steps = self.train_steps, self.train_steps + 1
        else:
            step = event.get("round", 0)
        tags = {"run": self.run_name, "operation": str(event.get("operation", "")), "name": str(event.get("name", ""))}
        for field, metric in HEADLINES.get(kind, {}).items():
            if event.get(field) is None:
                continue
            value = float(event[field])
            tag = metric
            if kind == "eval":  # eval/accuracy/<operation>/<who>, one point per round
                who = re.fullmatch(r"(.*?)(?:_round_(\d+))?", tags["name"])
                tag, step = f"{metric}/{tags['operation']}/{who[1]}", int(who[2] or 0)
            self.tensorboard.add_scalar(tag, value, step)
            if ray.is_initialized():  # before the driver joins Ray there is nowhere to send a gauge
                self._gauge(metric).set(value, tags=tags)

    def _gauge(self, metric: str) -> Any:
        """Ray's gauge for `metric`, made on first use."""
        if metric not in self.gauges:
            from ray.util.metrics import Gauge

            self.gauges[metric] = Gauge(gauge_name(metric), description=f"cdscale {metric}", tag_keys=GAUGE_TAGS)
        return self.gauges[metric]

    def close(self) -> None:
        """Flush and close the file and TensorBoard's writer; closing again does nothing."""
        self.closed = True
        self._close_outputs()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
