"""The CPU transport: rank 0's full weights go through Ray's object store to every engine.

Every rank takes part in the export (ZeRO-3 gathers each parameter collectively); only
rank 0 returns the weights as numpy arrays (`packing.py`). Its return value stays
in the object store: the engines on the node read it there without a copy, and the driver
never copies the weights through its own process.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from cdscale.student.group import get_from_every_rank
from cdscale.sync import EngineWeights, SyncStats, WeightSync


def export_weights(trainers: list[Any], timeout_s: float, method: str = "export_weights") -> ray.ObjectRef:
    """An ObjectRef of rank 0's full weights (`PackedWeights`), or of what another export
    `method` returns on rank 0 (`export_adapter`); every rank must take part."""
    refs = [getattr(t, method).remote() for t in trainers]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s, fetch_local=False)
    if len(ready) < len(refs):
        raise TimeoutError(
            f"{method}: {len(refs) - len(ready)} of {len(refs)} ranks did not finish within {timeout_s:.0f}s "
            "(run.timeout_s)"
        )
    try:
        ray.get(refs[1:], timeout=timeout_s)  # raises a rank's error here rather than in the engines
    except ray.exceptions.RayTaskError:
        get_from_every_rank(refs, timeout_s)  # a dead rank 0's death rather than rank 1's broken collective
        raise
    return refs[0]


def load_packed(engines: list[Any], weights: EngineWeights, timeout_s: float) -> SyncStats:
    """Load `weights.packed` (an ObjectRef of `PackedWeights`) into every engine as `weights.version`."""
    start = time.perf_counter()
    loaded = ray.get([e.update_weights.remote(weights.packed, weights.version) for e in engines], timeout=timeout_s)
    return SyncStats(
        transport="object_store",
        version=weights.version,
        seconds=time.perf_counter() - start,
        bytes=loaded[0]["bytes"],
        reload_s=max(x["seconds"] for x in loaded),
    )


class ObjectStoreSync(WeightSync):
    transport = "object_store"

    def push(self, trainers: list[Any], engines: list[Any], version: int) -> tuple[SyncStats, EngineWeights]:
        """Export from the trainers, then load into every engine. The weights stay in the
        object store (`EngineWeights.packed`): a checkpoint and a replacement engine reuse them."""
        start = time.perf_counter()
        held = EngineWeights(version, export_weights(trainers, self.timeout_s))
        export_s = time.perf_counter() - start
        stats = load_packed(engines, held, self.timeout_s)
        stats.export_s, stats.seconds = export_s, time.perf_counter() - start
        return stats, held
