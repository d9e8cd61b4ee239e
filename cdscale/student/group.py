"""The DeepSpeed ranks as one group (step 4 of a round, and the source of step 5).

The ranks form one process group, so most calls must reach every rank at once (a collective
waits for all): `call` is the one place that sends a call to every rank and waits, bounded by
the run's timeout. A rank that dies takes the group with it: `restart` replaces all ranks in
their bundles, and the driver then loads the last commit into them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ray

from cdscale.placement import PlacementGroup, in_bundle
from cdscale.preemption import wait_or_stop
from cdscale.student.trainer import StudentTrainer, TrainerSettings

if TYPE_CHECKING:
    from cdscale.config import Config


def deepspeed_config(cfg: Config) -> dict[str, Any]:
    """The DeepSpeed config of the run's ranks (only DeepSpeed's own keys)."""
    s = cfg.student
    zero: dict[str, Any] = {"stage": s.zero_stage}
    if s.offload != "none":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if s.offload == "optimizer_and_params":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_batch_size": s.batch_size,
        "train_micro_batch_size_per_gpu": s.batch_size // s.num_ranks,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": s.grad_clip,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": cfg.model.dtype == "bfloat16"},
        "fp16": {"enabled": cfg.model.dtype == "float16"},
        "steps_per_print": 10**9,
        # An offloaded optimizer steps with torch's fused CPU AdamW (`StudentTrainer._optimizer`),
        # which DeepSpeed would refuse, asking for its own CPU Adam.
        "zero_force_ds_cpu_optimizer": False,
    }


def get_from_every_rank(refs: list[ray.ObjectRef], timeout_s: float) -> list[Any]:
    """The results of one call on every rank, in rank order. When a rank died, its death is
    raised (the driver restarts the ranks), not the error a surviving rank got from the broken
    collective (gloo: "Connection reset by peer"), whichever came first."""
    try:
        return ray.get(refs, timeout=timeout_s)
    except ray.exceptions.RayTaskError as first:
        for ref in refs:
            try:
                ray.get(ref, timeout=timeout_s)
            except ray.exceptions.RayActorError:
                raise
            except ray.exceptions.RayTaskError:
                pass
        raise first


@dataclass
class TrainerGroup:
    settings: TrainerSettings
    ds_config: dict[str, Any]
    num_ranks: int
    cpus: float = 1.0  # Ray CPUs and GPUs per rank
    gpus: float = 0.0
    placement: PlacementGroup | None = None  # rank i in bundle i when given
    timeout_s: float = 3600.0
    actors: list[Any] = field(default_factory=list)

    @classmethod
    def from_config(cls, cfg: Config, model_path: str, placement: PlacementGroup | None = None) -> TrainerGroup:
        s = cfg.student
        settings = TrainerSettings.from_config(cfg, model_path)
        return cls(
            settings, deepspeed_config(cfg), s.num_ranks, s.cpus_per_rank, s.gpus_per_rank, placement, cfg.run.timeout_s
        )

    def start(self, stop: Callable[[], bool] | None = None) -> TrainerGroup:
        """Start the ranks and join them in one process group (it forms only when all join).
        A stop request raises `Preempted` within a second, not after the model has loaded."""
        actor = ray.remote(StudentTrainer)
        self.actors = [
            actor.options(num_cpus=self.cpus, num_gpus=self.gpus, **in_bundle(self.placement, rank)).remote(
                rank, self.num_ranks, self.settings, self.ds_config
            )
            for rank in range(self.num_ranks)
        ]
        address = self.rank0.master_address.remote()
        self._wait([address], stop)
        setup = [t.setup.remote(*ray.get(address)) for t in self.actors]
        self._wait(setup, stop)
        # {"total": ..., "trainable": ...} parameters: the adapters' alone train in a LoRA student
        self.parameters = get_from_every_rank(setup, self.timeout_s)[0]
        self.actor_ids = set(self.call("actor_id"))
        return self

    def _wait(self, refs: list[Any], stop: Callable[[], bool] | None) -> None:
        if not wait_or_stop(refs, stop, self.timeout_s, "stopped while the trainer ranks were starting"):
            raise TimeoutError(
                f"{self.num_ranks} trainer rank(s) were not set up after {self.timeout_s:.0f}s (run.timeout_s)"
            )

    @property
    def rank0(self) -> Any:
        return self.actors[0]

    def call(self, method: str, *args: Any) -> list[Any]:
        """`method(*args)` on every rank at once; their results in rank order."""
        return get_from_every_rank([getattr(t, method).remote(*args) for t in self.actors], self.timeout_s)

    def owns(self, err: ray.exceptions.RayActorError) -> bool:
        """Whether the actor that died is one of these ranks."""
        return err.actor_id in self.actor_ids

    def kill(self) -> None:
        for trainer in self.actors:
            ray.kill(trainer)

    def restart(self, stop: Callable[[], bool] | None = None) -> None:
        """New ranks in the dead ones' bundles, with the model's own weights: load a commit next."""
        self.kill()
        self.start(stop)
