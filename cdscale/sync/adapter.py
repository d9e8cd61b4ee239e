"""The LoRA transport: only a LoRA student's adapter goes to the engines, which apply it per
request (vLLM LoRA) on base weights that never change.

An adapter is a few MB where the model is GB, so it always travels through Ray's object store
(a broadcast group's set-up would cost more than it saves). Going back to the model's own
weights (version 0, a frozen teacher) drops the adapter: nothing is reloaded, and the
teacher's answers are the base model's exactly, however many syncs came before.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from cdscale.sync import EngineWeights, SyncStats, WeightSync
from cdscale.sync.object_store import export_weights


class AdapterSync(WeightSync):
    transport = "adapter"

    def initial(self, trainers: list[Any]) -> EngineWeights:
        return EngineWeights(0, adapter=True)  # the base weights: the engines loaded them at start

    def push(self, trainers: list[Any], engines: list[Any], version: int) -> tuple[SyncStats, EngineWeights]:
        start = time.perf_counter()
        held = EngineWeights(version, export_weights(trainers, self.timeout_s, "export_adapter"), adapter=True)
        export_s = time.perf_counter() - start
        stats = self.load(engines, held)
        stats.export_s, stats.seconds = export_s, time.perf_counter() - start
        return stats, held

    def load(self, engines: list[Any], weights: EngineWeights) -> SyncStats:
        start = time.perf_counter()
        adapter = weights.packed if weights.version > 0 else None
        loaded = ray.get([e.update_adapter.remote(adapter, weights.version) for e in engines], timeout=self.timeout_s)
        return SyncStats(
            transport=self.transport,
            version=weights.version,
            seconds=time.perf_counter() - start,
            bytes=loaded[0]["bytes"],
            reload_s=max(x["seconds"] for x in loaded),
        )
