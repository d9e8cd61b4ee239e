"""One DeepSpeed ZeRO rank in a Ray actor (step 4 of a round: train; step 5: export weights).

The driver makes M of these, then calls `setup` on all of them at once (the process
group forms only when every rank joins). Each `train_step` gets this rank's share of the
global batch; DeepSpeed averages gradients across ranks.
"""
from __future__ import annotations

import json
import os
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import torch

from cdscale.checkpoint import rng_state, set_rng_state, write_json_atomic
from cdscale.student.losses import distillation_loss
from cdscale.sync.broadcast import BucketPlan, close_group, open_group, pack_bucket, plan_entry
from cdscale.sync.packing import PackedWeights, buckets, pack


def free_port() -> int:
    """A TCP port free on every interface of this node now (DeepSpeed's rendezvous, test servers)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def collate(records: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad student sequences; list the answer positions and the teacher's signal there.

    The logits at position t predict token t + 1, so the answer token at index j is
    scored from the logits at j - 1. `keep` lists the positions whose logits any row needs;
    answer token i is scored from `logits[rows[i], cols[i]]` of the kept logits.
    """
    length = max(len(r["input_ids"]) for r in records)
    input_ids = torch.full((len(records), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(records), length), dtype=torch.long)
    rows, cols, targets, topk_ids, topk_lps = [], [], [], [], []
    for i, r in enumerate(records):
        ids = r["input_ids"]
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        for j in range(r["answer_start"], len(ids)):
            rows.append(i)
            cols.append(j - 1)
            targets.append(ids[j])
        topk_ids.extend(r["topk_ids"])
        topk_lps.extend(r["topk_logprobs"])
    keep = sorted(set(cols))
    kept_index = {c: i for i, c in enumerate(keep)}
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "keep": torch.tensor(keep),
        "rows": torch.tensor(rows),
        "cols": torch.tensor([kept_index[c] for c in cols]),
        "target_ids": torch.tensor(targets),
        "topk_ids": torch.tensor(topk_ids, dtype=torch.long),
        "topk_logprobs": torch.tensor(topk_lps, dtype=torch.float32),
    }


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def answer_logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The student's logits at the answer positions only, one row per answer token.

    `logits_to_keep` makes the LM head run on the kept positions alone, so the full
    (batch, sequence, vocabulary) logits are never materialized. `use_cache=False`: a
    training forward has no use for the key/value cache the model would otherwise build.
    """
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=batch["keep"], use_cache=False
    ).logits
    return logits[batch["rows"], batch["cols"]]


class StudentTrainer:
    def __init__(
        self, rank: int, world_size: int, model_path: str, dtype: str, ds_config: dict, loss: str, seed: int,
        loss_options: dict[str, Any] | None = None,
    ):
        """`loss`: a name in `losses.LOSSES`; `loss_options`: its temperature, jsd_beta, soft_label_samples."""
        self.rank, self.world_size = rank, world_size
        self.model_path, self.dtype, self.ds_config, self.loss_name, self.seed = model_path, dtype, ds_config, loss, seed
        self.loss_options = loss_options or {}

    def master_address(self) -> tuple[str, int]:
        import ray

        return ray.util.get_node_ip_address(), free_port()

    def setup(self, master_addr: str, master_port: int) -> int:
        """Join the process group and build the DeepSpeed engine. Returns the parameter count."""
        import deepspeed
        from deepspeed.accelerator import get_accelerator
        from transformers import AutoModelForCausalLM

        os.environ.update(
            {
                "RANK": str(self.rank),
                "WORLD_SIZE": str(self.world_size),
                "LOCAL_RANK": "0",
                "MASTER_ADDR": master_addr,
                "MASTER_PORT": str(master_port),
            }
        )
        torch.manual_seed(self.seed)
        self.rss_before_model = _rss_bytes()
        # A collective whose peer died fails after run.timeout_s instead of waiting forever.
        deepspeed.init_distributed(
            dist_backend=get_accelerator().communication_backend_name(), timeout=timedelta(seconds=self.ds_config["_timeout_s"])
        )
        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=getattr(torch, self.dtype))
        self.pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        # Plain torch AdamW: works on CPU and GPU alike, no op compilation at start-up.
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=self.ds_config["_lr"], weight_decay=self.ds_config["_weight_decay"]
        )
        config = {k: v for k, v in self.ds_config.items() if not k.startswith("_")}
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        self.device = self.engine.device
        return sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters())

    def set_records(self, records: list[dict[str, Any]]) -> int:
        """Hold this round's distillation records (sent once per round, not once per step)."""
        self.records = records
        return len(records)

    def train_steps(self, batches: list[list[int]], lrs: list[float]) -> list[dict[str, float]]:
        """Several optimizer steps in one call; batches index into `set_records`. Fewer
        round trips to the driver: per-step calls cost more than a tiny model's step."""
        return [self.train_step([self.records[i] for i in batch], lr) for batch, lr in zip(batches, lrs)]

    def train_step(self, records: list[dict[str, Any]], lr: float) -> dict[str, float]:
        """One optimizer step on this rank's share of the global batch."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = {k: v.to(self.device) for k, v in collate(records, self.pad_id).items()}
        self.engine.train()
        logits = answer_logits(self.engine, batch)
        # Sampled soft labels draw from a stream fixed by seed, rank and step: a resumed run draws the same.
        generator = torch.Generator(device=self.device).manual_seed(hash((self.seed, self.rank, self.engine.global_steps)) % 2**63)
        loss = distillation_loss(
            self.loss_name, logits, batch["target_ids"], batch["topk_ids"], batch["topk_logprobs"],
            generator=generator, **self.loss_options,
        )
        # Every rank learns whether any rank's loss is non-finite, so all stop together: a rank
        # that went on to backward alone would wait forever in the gradient all-reduce.
        finite = torch.tensor([float(torch.isfinite(loss))], device=self.device)
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if finite.item() == 0:
            raise FloatingPointError(
                f"rank {self.rank}: a rank's loss is not finite (this rank's: {loss.item()}); all ranks stopped before the update"
            )
        self.engine.backward(loss)
        self.engine.step()
        with torch.no_grad():
            accuracy = (logits.argmax(-1) == batch["target_ids"]).float().mean().item()
        return {"loss": loss.item(), "tokens": int(batch["attention_mask"].sum()), "answer_tokens": len(batch["rows"]), "token_accuracy": accuracy}

    def memory_stats(self) -> dict[str, int]:
        """This rank's peak memory: allocated device memory on GPU; on CPU the peak resident
        set size, and the resident size before the model was loaded (the process's base)."""
        if self.device.type == "cuda":
            return {"peak_bytes": torch.cuda.max_memory_allocated(), "base_bytes": 0}
        import resource

        return {"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "base_bytes": self.rss_before_model}

    def save_state(self, folder: str) -> None:
        """This rank's part of the training state (weights, optimizer, step) under `folder`.
        Every rank must call this; the driver commits the folder once all have returned."""
        self.engine.save_checkpoint(folder, tag="trainer", save_latest=False)
        # Nothing draws from the global generators yet (the sampled soft labels use a
        # generator seeded per step), but a model with dropout would: resume restores them.
        write_json_atomic(Path(folder) / f"rng_rank{self.rank}.json", rng_state())

    def load_state(self, folder: str) -> None:
        """Load what `save_state` wrote; every rank must call this."""
        path, _ = self.engine.load_checkpoint(folder, tag="trainer", load_lr_scheduler_states=False)
        if path is None:
            raise FileNotFoundError(f"{folder}: no trainer state for rank {self.rank}")
        set_rng_state(json.loads((Path(folder) / f"rng_rank{self.rank}.json").read_text()))

    def _buckets(self) -> list[list[tuple[str, torch.nn.Parameter]]]:
        """The parameters in buckets of at most sync.bucket_mb of full weights, in order."""
        full_bytes = lambda p: getattr(p, "ds_numel", p.numel()) * p.element_size()  # noqa: E731 (ZeRO-3 holds a shard)
        return list(buckets(self.engine.module.named_parameters(), self.ds_config["_bucket_mb"] * 2**20, full_bytes))

    def _full_buckets(self) -> Iterator[list[tuple[str, torch.nn.Parameter]]]:
        """Each bucket with its parameters whole. Every rank must iterate: under ZeRO-3 each
        bucket is gathered by one collective, and freed again before the next."""
        import deepspeed

        zero3 = self.engine.zero_optimization_stage() == 3
        for bucket in self._buckets():
            if not zero3:
                yield bucket
                continue
            with deepspeed.zero.GatheredParameters([p for _, p in bucket]):
                yield bucket

    def weight_plan(self) -> list[BucketPlan]:
        """The buckets `broadcast_weights` sends: each tensor's name, dtype and full shape."""
        return [
            [plan_entry(name, p.dtype, getattr(p, "ds_shape", p.shape)) for name, p in bucket]
            for bucket in self._buckets()
        ]

    def export_weights(self) -> PackedWeights | None:
        """Full weights in Hugging Face names as numpy arrays, on rank 0 only. Every rank
        must call this: under ZeRO-3 each bucket is gathered collectively."""
        if self.engine.zero_optimization_stage() < 3:
            # Full parameters on every rank: hand Ray views of them, and its out-of-band
            # serialization of the return value is the only copy.
            return pack(self.engine.module.named_parameters(), copy=False) if self.rank == 0 else None
        named = []  # rank 0 keeps a CPU copy of each gathered bucket
        for bucket in self._full_buckets():
            if self.rank == 0:
                named += [(name, p.detach().to("cpu", copy=True)) for name, p in bucket]
        return pack(named, copy=False) if self.rank == 0 else None

    def broadcast_weights(self, host: str, port: int, world_size: int, backend: str, timeout_s: float) -> None:
        """Send the full weights to the engines' sync group as rank 0 of it (`sync/broadcast.py`).
        Every rank must call this; only rank 0 joins the group and sends."""
        group = open_group(host, port, 0, world_size, backend, timeout_s) if self.rank == 0 else None
        try:
            for bucket in self._full_buckets():
                if group is not None:
                    group.broadcast(pack_bucket([p for _, p in bucket]), 0).wait()
        finally:
            if group is not None:
                close_group(group, backend)
