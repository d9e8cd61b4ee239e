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


def export_weights(trainers: list[Any], timeout_s: float) -> ray.ObjectRef:
    """An ObjectRef of rank 0's full weights (`PackedWeights`); every rank must take part."""
    refs = [t.export_weights.remote() for t in trainers]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s, fetch_local=False)
    if len(ready) < len(refs):
        raise TimeoutError(f"weight export: {len(refs) - len(ready)} of {len(refs)} ranks did not finish within {timeout_s:.0f}s (run.timeout_s)")
    ray.get(refs[1:], timeout=timeout_s)  # raises a rank's error here rather than in the engines
    return refs[0]


def push_weights(
    trainers: list[Any] | None,
    engines: list[Any],
    version: int,
    timeout_s: float,
    weights: ray.ObjectRef | None = None,
) -> tuple[dict[str, Any], ray.ObjectRef]:
    """Export from the trainers (or take `weights`, an ObjectRef of `PackedWeights`)
    and load into every engine. Returns timing and size, and the weights' ObjectRef so a
    caller that also saves them need not gather them again."""
    start = time.perf_counter()
    if weights is None:
        weights = export_weights(trainers, timeout_s)
    export_s = time.perf_counter() - start
    loaded = ray.get([e.update_weights.remote(weights, version) for e in engines], timeout=timeout_s)
    stats = {
        "seconds": time.perf_counter() - start, "export_s": export_s, "reload_s": max(x["seconds"] for x in loaded),
        "bytes": loaded[0]["bytes"], "version": version, "transport": "object_store",
    }
    return stats, weights
