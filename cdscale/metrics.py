"""What a run reports while it runs.

Every event goes to metrics.jsonl in the run directory (the record `cdscale report` reads).
The headline numbers of an event also go to TensorBoard event files (run_dir/tensorboard)
and to Ray's metrics as gauges named cdscale_*: the Ray dashboard's Metrics view and each
node's Prometheus endpoint show them while the run goes on.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

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


class MetricsLog:
    """metrics.jsonl (a new run starts it afresh, a resumed one appends), TensorBoard and Ray gauges."""

    def __init__(self, run_dir: Path, append: bool = False) -> None:
        from torch.utils.tensorboard import SummaryWriter

        path = run_dir / "metrics.jsonl"
        # A resumed run goes on counting optimizer steps where the file left off, so its
        # TensorBoard curves continue rather than start again at step 0.
        self.train_steps = sum('"event": "train"' in line for line in path.open()) if append and path.exists() else 0
        self.file = open(path, "a" if append else "w")
        self.run_name = run_dir.name
        self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"), flush_secs=10)
        self.gauges: dict[str, Any] = {}

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
        self.tensorboard.close()
        self.file.close()

