"""The collective transport: trainer rank 0 broadcasts the weights to every engine in packed
buckets, over a process group of their own (gloo between CPUs, NCCL between GPUs).

The group is rank 0 of the trainers (group rank 0, the sender) plus every worker of every
engine (a tensor-parallel engine has several; each takes the full weights and keeps its
shard). It is a process group of its own (`open_group`), so neither DeepSpeed's process group
nor vLLM's own is touched, and it lives for one sync only: a replaced engine or a restarted
trainer needs no rejoin, at the cost of forming the group again.

Each bucket travels as one flat byte buffer: one collective per bucket rather than per
tensor. Both ends cut the buckets from the same plan (`StudentTrainer.weight_plan`), so the
engines know every buffer's size and how to slice it before it arrives. Every trainer rank
takes part in a sync (ZeRO-3 gathers each bucket collectively); only rank 0 sends.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterable

import torch

from cdscale.sync import EngineWeights, SyncStats, WeightSync
from cdscale.sync.packing import dtype_name

# A bucket in the plan: (name, torch dtype name, shape) of each of its tensors, in order.
BucketPlan = list[tuple[str, str, list[int]]]


@dataclass(frozen=True)
class SyncGroup:
    """Where and how one sync's process group meets: group rank 0 (trainer rank 0) hosts its
    rendezvous, a TCP store, at host:port."""

    host: str
    port: int
    world_size: int
    backend: str  # gloo between CPUs, nccl between GPUs
    timeout_s: float


def open_group(spec: SyncGroup, rank: int) -> Any:
    """Join the sync group as `rank`.

    A bare gloo or NCCL backend object built on its own store: it leaves the process's default
    group alone (DeepSpeed's in a trainer, vLLM's in an engine), and needs nothing but torch.
    """
    import torch.distributed as dist

    timeout = timedelta(seconds=spec.timeout_s)
    tcp = dist.TCPStore(spec.host, spec.port, spec.world_size, is_master=rank == 0, timeout=timeout)
    store = dist.PrefixStore("cdscale-sync", tcp)
    if spec.backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, spec.world_size, timeout)
    options = dist.ProcessGroupNCCL.Options()
    options._timeout = timeout
    return dist.ProcessGroupNCCL(store, rank, spec.world_size, options)


def close_group(group: Any, backend: str) -> None:
    """Leave the sync group once its last collective is done. NCCL's `wait()` only makes the
    GPU stream wait for the collective, so the host waits for the stream before shutting down."""
    if backend == "nccl":
        torch.cuda.current_stream().synchronize()
    group.shutdown()


def plan_entry(name: str, dtype: torch.dtype, shape: Iterable[int]) -> tuple[str, str, list[int]]:
    return name, dtype_name(dtype), list(shape)


# Each tensor starts at a multiple of this many bytes: a view of a byte buffer as a wider
# dtype must start at a multiple of that dtype's size.
ALIGN = 16


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def pack_bucket(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors' bytes, one after the other (each padded to ALIGN), in one uint8 buffer on their device."""
    parts = []
    for t in tensors:
        raw = t.detach().contiguous().reshape(-1).view(torch.uint8)
        parts += [raw, raw.new_zeros(_aligned(raw.numel()) - raw.numel())]
    return torch.cat(parts)


def bucket_bytes(plan: BucketPlan) -> int:
    return sum(_aligned(getattr(torch, dtype).itemsize * math.prod(shape)) for _, dtype, shape in plan)


def unpack_bucket(buffer: torch.Tensor, plan: BucketPlan) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) views into `buffer`, as `pack_bucket` laid them out."""
    if buffer.numel() != bucket_bytes(plan):
        raise ValueError(f"a bucket of {buffer.numel()} bytes does not match its plan of {bucket_bytes(plan)} bytes")
    named, offset = [], 0
    for name, dtype, shape in plan:
        dt = getattr(torch, dtype)
        size = dt.itemsize * math.prod(shape)
        named.append((name, buffer[offset : offset + size].view(dt).view(shape)))
        offset += _aligned(size)
    return named


def receive(group: Any, plan: list[BucketPlan], device: torch.device) -> list[tuple[str, torch.Tensor]]:
    """Every bucket of the plan, received from group rank 0 into fresh buffers on `device`."""
    named = []
    for bucket in plan:
        buffer = torch.empty(bucket_bytes(bucket), dtype=torch.uint8, device=device)
        group.broadcast(buffer, 0).wait()
        named += unpack_bucket(buffer, bucket)
    return named


class BroadcastSync(WeightSync):
    transport = "broadcast"

    def __init__(self, timeout_s: float, backend: str) -> None:
        super().__init__(timeout_s)
        self.backend = backend  # gloo between CPUs, nccl between GPUs

    def push(self, trainers: list[Any], engines: list[Any], version: int) -> tuple[SyncStats, EngineWeights]:
        """Broadcast the trainers' weights into every engine. Nothing stays in the object store:
        what the engines hold are the trainers' weights of this sync (`EngineWeights`)."""
        import ray  # here, not at the top: trainer ranks use this module's group and packing without Ray

        start, timeout_s = time.perf_counter(), self.timeout_s
        plan, (host, port), *workers = ray.get(
            [
                trainers[0].weight_plan.remote(),
                trainers[0].master_address.remote(),
                *(e.get_num_workers.remote() for e in engines),
            ],
            timeout=timeout_s,
        )
        first_ranks = [1 + sum(workers[:i]) for i in range(len(engines))]  # each engine's workers in turn after rank 0
        group = SyncGroup(host, port, 1 + sum(workers), self.backend, timeout_s)
        sends = [t.broadcast_weights.remote(group) for t in trainers]
        receives = [e.receive_weights.remote(group, first, plan, version) for e, first in zip(engines, first_ranks)]
        pending = sends + receives
        while pending:  # a failure on either side raises here at once, not after the others time out
            done, pending = ray.wait(pending, num_returns=1, timeout=timeout_s)
            if not done:
                raise TimeoutError(
                    f"weight broadcast: {len(pending)} trainers and engines not done "
                    f"after {timeout_s:.0f}s (run.timeout_s)"
                )
            ray.get(done)
        loaded = ray.get(receives)
        stats = SyncStats(
            transport="broadcast",
            version=version,
            seconds=time.perf_counter() - start,
            bytes=loaded[0]["bytes"],
            reload_s=max(x["reload_s"] for x in loaded),
            receive_s=max(x["receive_s"] for x in loaded),
            buckets=len(plan),
            backend=self.backend,
        )
        return stats, EngineWeights(version)
