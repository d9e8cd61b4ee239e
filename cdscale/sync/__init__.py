"""Weight sync: trainer weights into the running teacher engines, by one of two transports.

`make_weight_sync(cfg)` picks the transport once, from the config (`config.weight_transport`);
the driver only ever calls `push`, `load` and `restore` on what it returns.
- object_store.py: rank 0's weights through Ray's object store (any placement);
- broadcast.py: rank 0 broadcasts packed buckets over a process group of their own;
- adapter.py: a LoRA student's adapter alone, which the engines apply per request.

What the engines hold is an explicit value, `EngineWeights`: the engine group keeps it, and
an engine that replaces a dead one is given exactly that (`WeightSync.restore`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # trainer ranks import this package without Ray (benchmarks/gpu_check.py)
    import ray

    from cdscale.config import Config


@dataclass(frozen=True)
class EngineWeights:
    """The weights the engines hold. Version 0 without `packed`: the model as the engines
    loaded it at start. `packed`: an ObjectRef of `PackedWeights` in the object store, when
    the weights went that way. Version n > 0 without `packed`: the trainers' weights as
    they were at sync n (broadcast), which the trainers keep until training starts again.
    `step` > 0: the trainers' weights at that step of round `version - 1`, mid-round
    (`data.refresh_every_steps`), so version 0 is always the untrained model."""

    version: int = 0
    packed: ray.ObjectRef | None = None
    adapter: bool = False  # `packed` holds a LoRA adapter (and its config), not full weights
    step: int = 0


@dataclass
class SyncStats:
    """One sync, as metrics.jsonl records it."""

    transport: str
    version: int
    seconds: float
    bytes: int
    reload_s: float
    export_s: float | None = None  # object store: rank 0's export before the engines load
    receive_s: float | None = None  # broadcast: the slowest engine's receive
    buckets: int | None = None  # broadcast
    backend: str | None = None  # broadcast: gloo or nccl

    def as_event(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


class WeightSync:
    """Moves the trainers' weights into the engines. Every trainer rank takes part in a push
    (ZeRO-3 gathers collectively); the transports differ only in how the bytes travel."""

    transport = ""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s

    def initial(self, trainers: list[Any]) -> EngineWeights:
        """The model's own weights as the trainers hold them before any training, kept in the
        object store for engines that must return to them (a frozen teacher)."""
        from cdscale.sync.object_store import export_weights

        return EngineWeights(0, export_weights(trainers, self.timeout_s))

    def push(self, trainers: list[Any], engines: list[Any], version: int) -> tuple[SyncStats, EngineWeights]:
        """The trainers' weights into every engine, as `version`; returns what the engines now hold."""
        raise NotImplementedError

    def load(self, engines: list[Any], weights: EngineWeights) -> SyncStats:
        """Weights already in the object store (`weights.packed`) into every engine."""
        from cdscale.sync.object_store import load_packed

        return load_packed(engines, weights, self.timeout_s)

    def restore(self, trainers: list[Any], engines: list[Any], held: EngineWeights) -> None:
        """Give new engines what the others hold (a replacement for a dead engine)."""
        if held.packed is not None:
            self.load(engines, held)
        elif held.version > 0:  # broadcast: the trainers still hold the weights of that sync
            self.push(trainers, engines, held.version)


def make_weight_sync(cfg: Config) -> WeightSync:
    """The adapter transport for a LoRA student (`student.lora.sync: adapter`), else the
    transport `sync.transport` resolves to (`config.weight_transport`)."""
    from cdscale.config import weight_transport
    from cdscale.sync.adapter import AdapterSync
    from cdscale.sync.broadcast import BroadcastSync
    from cdscale.sync.object_store import ObjectStoreSync

    if cfg.student.lora.adapter_sync:
        return AdapterSync(cfg.run.timeout_s)
    transport, backend = weight_transport(cfg)
    if transport == "broadcast":
        return BroadcastSync(cfg.run.timeout_s, backend)
    return ObjectStoreSync(cfg.run.timeout_s)
