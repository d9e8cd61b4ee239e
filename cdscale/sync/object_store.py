"""The CPU transport: rank 0's full weights go through Ray's object store to every engine.

Every rank takes part in the export (ZeRO-3 gathers each parameter collectively); only
rank 0 returns the weights. The object is put once and read by all engines.
"""
from __future__ import annotations

import time
from typing import Any

import ray


def export_weights(trainers: list[Any], timeout_s: float) -> list[tuple[str, Any]]:
    """Rank 0's full weights; every rank must take part (ZeRO-3 gathers collectively)."""
    return ray.get([t.export_weights.remote() for t in trainers], timeout=timeout_s)[0]


def push_weights(
    trainers: list[Any] | None,
    engines: list[Any],
    version: int,
    timeout_s: float,
    weights: Any = None,
) -> tuple[dict[str, Any], ray.ObjectRef]:
    """Export from the trainers (or take `weights`, an ObjectRef of (name, tensor) pairs)
    and load into every engine. Returns timing and size, and the weights' ObjectRef so a
    caller that also saves them need not gather them again."""
    start = time.perf_counter()
    nbytes = None
    if weights is None:
        exported = export_weights(trainers, timeout_s)
        nbytes = sum(t.numel() * t.element_size() for _, t in exported)
        weights = ray.put(exported)
    export_s = time.perf_counter() - start
    ray.get([e.update_weights.remote(weights, version) for e in engines], timeout=timeout_s)
    stats = {"seconds": time.perf_counter() - start, "export_s": export_s, "bytes": nbytes, "version": version}
    return stats, weights
