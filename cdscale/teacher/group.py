"""The teacher engines as one group (steps 2 and 6 of a round, and the target of step 5).

The group starts the engine actors, spreads prompts over them in chunks (a new chunk to
whichever engine is free), and replaces an engine that dies with a new one in the same
placement bundle, given the weights the group holds (`weights`, kept by the driver after
every sync), so a replacement never teaches or answers with stale weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

import ray

from cdscale.config import RunFailed
from cdscale.placement import PlacementGroup, in_bundle
from cdscale.preemption import wait_or_stop
from cdscale.sync import EngineWeights
from cdscale.teacher.engine import ENGINE_ENV, EngineSettings, TeacherEngine

if TYPE_CHECKING:
    from cdscale.config import Config

log = logging.getLogger(__name__)


def fitting(prompts: list[list[int]], max_model_len: int) -> list[int]:
    """The indices of the prompts that leave room to generate in an engine's context of
    `max_model_len` tokens. The others are skipped (and counted), not sent to fail inside vLLM."""
    return [i for i, p in enumerate(prompts) if len(p) < max_model_len]


@dataclass
class EngineGroup:
    settings: EngineSettings
    cpus: float = 1.0  # Ray CPUs and GPUs per engine
    gpus: float = 0.0
    placement: PlacementGroup | None = None  # engine i in bundle i when given
    timeout_s: float = 3600.0  # of each call, so a dead actor is an error, not a hang
    max_restarts: int = 0  # engines that may die and be replaced in a run
    chunk_size: int = 2048  # prompts per engine call; a dead engine redoes only its chunk
    engines: list[Any] = field(default_factory=list)
    weights: EngineWeights = field(default_factory=EngineWeights)  # what the engines hold now
    # How a replacement engine is given `weights` (set by the driver, which knows the sync).
    restore: Callable[[list[Any], EngineWeights], None] | None = None
    replaced: int = 0
    redone_prompts: int = 0
    loaded: bool = False  # every engine has loaded its model (a call before that waits for it)

    @classmethod
    def from_config(cls, cfg: Config, model_path: str, placement: PlacementGroup | None = None) -> EngineGroup:
        t = cfg.teacher
        return cls(
            EngineSettings.from_config(cfg, model_path),
            t.cpus_per_engine,
            t.gpus_per_engine,
            placement,
            cfg.run.timeout_s,
            t.max_engine_restarts,
            t.chunk_size,
        )

    def start(self, count: int) -> EngineGroup:
        """Start `count` engines and wait until every one has loaded its model."""
        return self.launch(count).wait_ready()

    def launch(self, count: int) -> EngineGroup:
        """Start `count` engines without waiting for them: they load their model while the
        caller does something else (the driver starts the trainer ranks meanwhile)."""
        self.engines = [self._actor(i, self.settings.seed + i) for i in range(count)]
        return self

    def wait_ready(self, stop: Callable[[], bool] | None = None) -> EngineGroup:
        """Wait until every launched engine has loaded its model (or fail after timeout_s;
        raise `Preempted` within a second of a stop request). An engine that failed to start
        raises its own error as soon as it has failed."""
        ready = [e.ready.remote() for e in self.engines]
        if not wait_or_stop(ready, stop, self.timeout_s, "stopped while the teacher engines were starting"):
            raise TimeoutError(
                f"{len(self.engines)} teacher engine(s) with {self.cpus} CPUs and {self.gpus} GPUs each were not ready "
                f"after {self.timeout_s:.0f}s (run.timeout_s); can the cluster place them?"
            )
        self.loaded = True
        return self

    def _actor(self, index: int, seed: int) -> Any:
        settings = replace(self.settings, seed=seed)
        options = dict(num_cpus=self.cpus, num_gpus=self.gpus, runtime_env={"env_vars": ENGINE_ENV})
        return ray.remote(TeacherEngine).options(**options, **in_bundle(self.placement, index)).remote(settings)

    def kill(self) -> None:
        # ray.kill runs no finalizers: an engine that served adapters removes their folder first
        # (a dead engine cannot; its folder stays in the temp dir). One still loading has none.
        if self.loaded:
            closing = [engine.close.remote() for engine in self.engines]
            ray.wait(closing, num_returns=len(closing), timeout=10)
        for engine in self.engines:
            ray.kill(engine)

    def generate(
        self,
        prompt_ids: list[list[int]],
        sampling: list[dict[str, Any]],
        desc: str,
        stop: Callable[[], bool] | None = None,
        base_weights: bool = False,
    ) -> list[dict[str, Any]]:
        """Outputs in prompt order, one SamplingParams per prompt (`TeacherEngine.generate_many`,
        which says what `base_weights` does).

        When `stop()` turns true, raise `Preempted` (the outputs so far are not kept). When
        an engine dies, a new one takes its place and only its unfinished chunk is sent again.
        """
        from tqdm import tqdm

        n, size = len(prompt_ids), self.chunk_size
        pending = [range(i, min(i + size, n)) for i in reversed(range(0, n, size))]
        results: list[dict[str, Any] | None] = [None] * n
        in_flight: dict[Any, tuple[Any, range]] = {}
        with tqdm(total=n, desc=desc, unit="prompt", leave=False) as bar:
            while pending or in_flight:
                busy = {engine for engine, _ in in_flight.values()}
                for engine in self.engines:
                    if pending and engine not in busy:
                        chunk = pending.pop()
                        ref = engine.generate_many.remote(
                            [prompt_ids[i] for i in chunk], [sampling[i] for i in chunk], base_weights
                        )
                        in_flight[ref] = (engine, chunk)
                done = self._wait_for_one(list(in_flight), stop, f"{desc}: stopped after {bar.n} of {n} prompts", desc)
                engine, chunk = in_flight.pop(done)
                try:
                    outputs = ray.get(done)
                except ray.exceptions.RayActorError:
                    log.info("%s: an engine died; replacing it and redoing its %d prompts", desc, len(chunk))
                    self._replace(engine, len(chunk))
                    pending.append(chunk)
                    continue
                for i, out in zip(chunk, outputs):
                    results[i] = out
                bar.update(len(chunk))
        return results  # type: ignore[return-value]

    def generate_fitting(
        self,
        prompt_ids: list[list[int]],
        sampling: dict[str, Any],
        desc: str,
        stop: Callable[[], bool] | None = None,
        base_weights: bool = False,
    ) -> list[dict[str, Any] | None]:
        """`generate` with one sampling for every prompt that `fitting` the engines' context,
        and None in the place of each one that does not (it is not sent)."""
        sent = fitting(prompt_ids, self.settings.max_model_len)
        outputs: list[dict[str, Any] | None] = [None] * len(prompt_ids)
        sent_outputs = self.generate([prompt_ids[i] for i in sent], [sampling] * len(sent), desc, stop, base_weights)
        for i, out in zip(sent, sent_outputs):
            outputs[i] = out
        return outputs

    def _wait_for_one(self, refs: list[Any], stop: Callable[[], bool] | None, stopped: str, desc: str) -> Any:
        """The first of `refs` to finish; a stop request is seen within a second, not after a whole chunk."""
        done = wait_or_stop(refs, stop, self.timeout_s, stopped, num_returns=1)
        if done:
            return done[0]
        raise TimeoutError(f"{desc}: no engine answered within {self.timeout_s:.0f}s (run.timeout_s)")

    def _replace(self, dead: Any, unfinished: int) -> None:
        """A new engine in `dead`'s place and bundle, holding `weights`; at most `max_restarts` per run."""
        if self.replaced >= self.max_restarts:
            raise RunFailed(
                f"{self.replaced} teacher engines died already (teacher.max_engine_restarts={self.max_restarts})"
            )
        i = self.engines.index(dead)
        ray.kill(dead)
        new = self._actor(i, self.settings.seed + len(self.engines) + self.replaced)  # a fresh random stream
        ray.get(new.ready.remote(), timeout=self.timeout_s)
        if self.restore is not None:
            self.restore([new], self.weights)
        self.engines[i] = new
        self.replaced += 1
        self.redone_prompts += unfinished
