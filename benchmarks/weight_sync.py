"""Weight sync benchmark: the whole student pushed from the DeepSpeed ranks into running
vLLM engines by each transport (the paths a round takes), against a plain in-memory copy of
the same state dict in one process, which is the physical floor on one machine.
"""

from __future__ import annotations

import statistics
from typing import Any

import ray
import torch

from benchmarks.common import Engines, Timer
from cdscale.config import load_config
from cdscale.student.group import TrainerGroup
from cdscale.sync.broadcast import BroadcastSync
from cdscale.sync.object_store import ObjectStoreSync, export_weights


def in_memory_copy_s(named_tensors: list[tuple[str, torch.Tensor]], reps: int) -> float:
    """Median seconds to clone the same weights the sync pushed, in one process."""
    state = {name: t.clone() for name, t in named_tensors}  # writable, owned tensors
    times = []
    for _ in range(reps):
        with Timer() as t:
            copied = {k: v.clone() for k, v in state.items()}
        times.append(t.seconds)
        del copied
    return statistics.median(times)


def run(
    model_path: str,
    num_engines: int,
    num_ranks: int,
    zero_stage: int,
    reps: int,
    engines: Engines | None = None,
    **engine_settings: Any,
) -> dict[str, Any]:
    """Both transports, one after the other, between the same ranks and engines. `engines`
    starts the engines (a fresh `Engines()` by default); `engine_settings` override their settings below."""
    engines = engines or Engines()
    cfg = load_config(
        None,
        [
            f"model.path={model_path}",
            f"student.num_ranks={num_ranks}",
            f"student.zero_stage={zero_stage}",
            f"student.batch_size={2 * num_ranks}",
        ],
    )
    settings = {
        **dict(
            model_path=model_path,
            dtype="float32",
            max_model_len=256,
            kv_cache_gib=0.25,
            max_logprobs=21,
            enable_prefix_caching=True,
            seed=0,
        ),
        **engine_settings,
    }
    receivers = engines.start(num_engines, **settings)
    group = TrainerGroup.from_config(cfg, model_path).start()
    trainers = group.actors
    syncs = {
        "object_store": lambda version: ObjectStoreSync(600).push(trainers, receivers.engines, version)[0].as_event(),
        "broadcast": lambda version: (
            BroadcastSync(600, "gloo").push(trainers, receivers.engines, version)[0].as_event()
        ),
    }
    try:
        runs = {
            name: [sync(version) for version in range(1, reps + 2)][1:] for name, sync in syncs.items()
        }  # the first sync is a warm-up
        pushed = ray.get(export_weights(trainers, 600))
    finally:
        engines.release(receivers)
        group.kill()
    nbytes = pushed.nbytes
    copy_s = in_memory_copy_s(pushed.named_tensors(), reps)
    result = {
        "bytes": nbytes,
        "num_engines": num_engines,
        "num_ranks": num_ranks,
        "zero_stage": zero_stage,
        "reps": reps,
        "copy_s": copy_s,
        "copy_bytes_per_s": nbytes / copy_s,
        "target_s": 3 * copy_s + 0.5,
    }
    for name, timed in runs.items():
        sync_s = statistics.median(r["seconds"] for r in timed)
        result[name] = {
            "sync_s": sync_s,
            "sync_bytes_per_s": nbytes / sync_s,
            # before the reload: the export into the object store, or the broadcast's gather and send
            # (till the last engine has it)
            "send_s": statistics.median(r["export_s" if name == "object_store" else "receive_s"] for r in timed),
            "reload_s": statistics.median(r["reload_s"] for r in timed),
            "target_met": sync_s <= result["target_s"],
        }
    return result


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        (
            "| model | transport | MB | sync s (export or send s, engine reload s) | MB/s | in-memory copy s | MB/s "
            "| sync / copy | target: 3 x copy + 0.5 s |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model, r in results.items():
        for name in ("object_store", "broadcast"):
            t = r[name]
            lines.append(
                f"| {model} | {name} | {r['bytes'] / 1e6:.1f} "
                f"| {t['sync_s']:.3f} ({t['send_s']:.3f}, {t['reload_s']:.3f}) | {t['sync_bytes_per_s'] / 1e6:,.0f} | "
                f"{r['copy_s']:.4f} | {r['copy_bytes_per_s'] / 1e6:,.0f} | {t['sync_s'] / r['copy_s']:.0f}x | "
                f"{r['target_s']:.2f} s: {'met' if t['target_met'] else 'MISSED'} |"
            )
    first = next(iter(results.values()))
    note = (
        f"ZeRO-{first['zero_stage']} with {first['num_ranks']} rank(s) "
        f"into {first['num_engines']} running engine(s), "
        "by each transport (`sync.transport`; the broadcast over gloo); "
        f"median of {first['reps']} syncs after a warm-up."
    )
    return note + "\n\n" + "\n".join(lines)
