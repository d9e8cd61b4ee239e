"""One DeepSpeed ZeRO rank in a Ray actor (step 4 of a round: train; step 5: export weights).

The driver makes M of these, then calls `setup` on all of them at once (the process
group forms only when every rank joins). `train_steps` gets the global batches; each rank
trains on its share and divides its loss by the global batch's answer-token count, so that
DeepSpeed's average of the ranks' gradients is the gradient of the global per-token mean.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import torch

from cdscale.checkpoint import rng_state, set_rng_state, write_json_atomic
from cdscale.student.lora import WeightEntry, adapter_config, adapter_parameters, add_adapters, weight_entries
from cdscale.student.losses import LossSpec, distillation_loss, sampled_reverse_kl_loss
from cdscale.sync.broadcast import BucketPlan, SyncGroup, close_group, open_group, pack_bucket, plan_entry
from cdscale.sync.packing import PackedWeights, buckets, pack

if TYPE_CHECKING:
    from cdscale.config import Config, LoraConfig


_PORTS = random.Random()  # not the global generator: runs seed that one, and two runs must not pick alike


def free_port() -> int:
    """A TCP port free on every interface of this node now (DeepSpeed's rendezvous, test servers).

    Drawn between Ray's worker ports (up to 19999) and the kernel's ephemeral range: a port
    from bind(0) comes from that range, where the outgoing connections of other processes can
    take it before its user binds it (seen with two test runs on one machine)."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    for _ in range(64):
        with socket.socket() as s:
            try:
                s.bind(("", _PORTS.randrange(20000, ephemeral_low) if ephemeral_low > 21000 else 0))
            except OSError:  # in use
                continue
            return s.getsockname()[1]
    raise OSError(f"no free TCP port between 20000 and {ephemeral_low}")


def pack_rows(lengths: list[int], row_tokens: int) -> list[list[int]]:
    """Sequence indices grouped into rows of at most `row_tokens` tokens: first fit, longest
    first (a sequence longer than `row_tokens` gets a row of its own)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, left in enumerate(room) if lengths[i] <= left), None)
        if row is None:
            rows.append([])
            room.append(row_tokens)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= lengths[i]
    return rows


def collate(records: list[dict[str, Any]], pad_id: int, pack_tokens: int = 0) -> dict[str, torch.Tensor]:
    """Student sequences as model inputs; the answer positions and the teacher's signal there.

    Each sequence gets a row of its own, right-padded to the longest, with an attention mask;
    or, with `pack_tokens`, rows of several sequences (`pack_rows`) with position ids that
    restart at each sequence and no attention mask: transformers then masks attention
    between the sequences of a row (its packed-sequence detection), so each sequence's
    logits are what it would get alone.

    The logits at position t predict token t + 1, so the answer token at index j is
    scored from the logits at j - 1. `keep` lists the positions whose logits any row needs;
    answer token i, in record order, is scored from `logits[rows[i], cols[i]]` of the kept
    logits.
    """
    lengths = [len(r["input_ids"]) for r in records]
    groups = pack_rows(lengths, pack_tokens) if pack_tokens else [[i] for i in range(len(records))]
    where = {}  # record index -> (row, offset of its first token in the row)
    for row, members in enumerate(groups):
        offset = 0
        for i in members:
            where[i] = (row, offset)
            offset += lengths[i]
    width = max(sum(lengths[i] for i in members) for members in groups)
    input_ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(groups), width), dtype=torch.long)
    attention = torch.zeros((len(groups), width), dtype=torch.long)
    rows, cols, targets = [], [], []
    for i, r in enumerate(records):
        ids = r["input_ids"]
        row, at = where[i]
        input_ids[row, at : at + len(ids)] = torch.tensor(ids)
        positions[row, at : at + len(ids)] = torch.arange(len(ids))
        attention[row, at : at + len(ids)] = 1
        for j in range(r["answer_start"], len(ids)):
            rows.append(row)
            cols.append(at + j - 1)
            targets.append(ids[j])
    keep = sorted(set(cols))
    kept_index = {c: i for i, c in enumerate(keep)}
    # The student's own samples carry the logprob the sampling weights gave each answer token.
    sampled = [r.get("sample_logprobs") for r in records]
    behaviour = {"sample_logprobs": torch.tensor([x for s in sampled for x in s])} if all(sampled) else {}
    if pack_tokens:  # a row's padding continues its last sequence's positions: no real token attends to it
        for row, members in enumerate(groups):
            used = sum(lengths[i] for i in members)
            positions[row, used:] = torch.arange(width - used) + lengths[members[-1]]
    layout = {"position_ids": positions} if pack_tokens else {"attention_mask": attention}
    return {
        **behaviour,
        **layout,
        "input_ids": input_ids,
        "keep": torch.tensor(keep),
        "rows": torch.tensor(rows),
        "cols": torch.tensor([kept_index[c] for c in cols]),
        "target_ids": torch.tensor(targets),
        **_teacher_rows(records),
    }


def _teacher_rows(records: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The teacher's rows at the answer tokens, in record order, padded to the batch's widest:
    gold records (one entry a row) share batches with the teacher's (top_k + 1 entries). Id 0
    with logprob -inf is the padding the losses skip."""
    ids = [row for r in records for row in r["topk_ids"]]
    logprobs = [row for r in records for row in r["topk_logprobs"]]
    support = max(map(len, ids), default=0)
    return {
        "topk_ids": torch.tensor([row + [0] * (support - len(row)) for row in ids], dtype=torch.long),
        "topk_logprobs": torch.tensor(
            [row + [-math.inf] * (support - len(row)) for row in logprobs], dtype=torch.float32
        ),
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
    layout = {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}
    logits = model(input_ids=batch["input_ids"], **layout, logits_to_keep=batch["keep"], use_cache=False).logits
    return logits[batch["rows"], batch["cols"]]


def answer_token_count(records: Iterable[dict[str, Any]]) -> int:
    """The answer tokens of `records`: the positions the loss is taken over."""
    return sum(len(r["input_ids"]) - r["answer_start"] for r in records)


def rank_loss(
    loss: LossSpec | str,
    logits: torch.Tensor,
    batch: dict[str, torch.Tensor],
    world_size: int,
    global_answer_tokens: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The loss one rank back-propagates: the sum of its per-token losses times
    world_size / global_answer_tokens.

    DeepSpeed divides the all-reduced gradient sum by world_size, so the update follows
    sum over ranks of (rank sum * W / N) / W = (sum over all N answer tokens) / N: the
    global per-token mean, whatever the ranks' counts. The mean of rank means, which a
    per-rank mean would give, weighs the tokens of a rank with fewer of them more.
    (verl's `global_token_num` and TRL's `num_items_in_batch` do the same.)
    """
    teacher = batch["target_ids"], batch["topk_ids"], batch["topk_logprobs"]
    spec = LossSpec(loss) if isinstance(loss, str) else loss
    if spec.name == "reverse_kl_sampled" and "sample_logprobs" in batch:
        per_token_sum = sampled_reverse_kl_loss(spec, logits, *teacher, batch["sample_logprobs"], reduction="sum")
    else:
        per_token_sum = distillation_loss(spec, logits, *teacher, generator, reduction="sum")
    return per_token_sum * (world_size / global_answer_tokens)


def combine_rank_stats(stats: list[dict[str, float]]) -> dict[str, float]:
    """One step's statistics from its ranks' `train_step` returns: the loss is the sum of the
    ranks' "loss" (each is its share of the global per-token mean), the token accuracy the
    ranks' accuracies weighted by their "answer_tokens", the token counts are sums."""
    answer_tokens = sum(x["answer_tokens"] for x in stats)
    return {
        "loss": sum(x["loss"] for x in stats),
        "token_accuracy": sum(x["token_accuracy"] * x["answer_tokens"] for x in stats) / answer_tokens,
        "tokens": sum(x["tokens"] for x in stats),
        "answer_tokens": answer_tokens,
    }


@dataclass(frozen=True)
class TrainerSettings:
    """What every rank of a run is started with, beside its DeepSpeed config."""

    model_path: str
    dtype: str = "float32"
    loss: LossSpec = LossSpec()
    seed: int = 0
    lr: float = 6e-4  # the optimizer's initial rate; each step sets its own (`train_steps`)
    weight_decay: float = 0.0
    timeout_s: float = 3600.0  # a collective whose peer died fails after this
    bucket_mb: int = 512  # full weights per ZeRO-3 gather and per broadcast bucket
    lora: LoraConfig | None = None  # a LoRA student: only the adapters train
    gradient_checkpointing: bool = False
    pack_tokens: int = 0  # see `collate`

    @classmethod
    def from_config(cls, cfg: Config, model_path: str) -> TrainerSettings:
        s = cfg.student
        loss = LossSpec(s.loss, s.temperature, s.jsd_beta, s.soft_label_samples, s.ratio_clip)
        return cls(
            model_path,
            cfg.model.dtype,
            loss,
            cfg.data.seed,
            s.lr,
            s.weight_decay,
            cfg.run.timeout_s,
            cfg.sync.bucket_mb,
            s.lora if s.lora.r > 0 else None,
            s.gradient_checkpointing,
            s.pack_tokens,
        )


class StudentTrainer:
    def __init__(self, rank: int, world_size: int, settings: TrainerSettings, ds_config: dict[str, Any]) -> None:
        """`ds_config`: DeepSpeed's own config (`student.group.deepspeed_config`)."""
        self.rank, self.world_size, self.settings, self.ds_config = rank, world_size, settings, ds_config
        self.seed = settings.seed

    def actor_id(self) -> str:
        """This rank's Ray actor id, as a `RayActorError` names a dead actor."""
        import ray

        return ray.get_runtime_context().get_actor_id()

    def master_address(self) -> tuple[str, int]:
        import ray

        return ray.util.get_node_ip_address(), free_port()

    def setup(self, master_addr: str, master_port: int) -> dict[str, int]:
        """Join the process group and build the DeepSpeed engine. Returns the parameter
        counts: "total" and "trainable" (the adapters', in a LoRA student)."""
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
        # DeepSpeed's CPU backend compiles (g++, 39 s on 2 CPUs, once per machine) and loads into
        # every rank a shared-memory op that serves only its inference all-reduce; training
        # never calls it. Marked unavailable, the ranks skip it.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        # A collective whose peer died fails after run.timeout_s instead of waiting forever.
        deepspeed.init_distributed(
            dist_backend=get_accelerator().communication_backend_name(),
            timeout=timedelta(seconds=self.settings.timeout_s),
        )
        model = AutoModelForCausalLM.from_pretrained(
            self.settings.model_path, dtype=getattr(torch, self.settings.dtype)
        )
        self.pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        if self.settings.gradient_checkpointing:
            # Non-reentrant: correct with frozen inputs (a LoRA student's embeddings) and no-op outside training.
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.settings.lora is not None:
            model = add_adapters(model, self.settings.lora)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = self._optimizer(trainable)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.ds_config
        )
        self.device = self.engine.device
        numel = lambda ps: sum(getattr(p, "ds_numel", p.numel()) for p in ps)  # noqa: E731 (ZeRO-3 holds a shard)
        return {"total": numel(model.parameters()), "trainable": numel(trainable)}

    def _optimizer(self, trainable: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """torch's AdamW: works on CPU and GPU alike, no op compilation at start-up. With the
        optimizer offloaded (`student.offload`) its states live in CPU memory and it steps
        there, with torch's fused CPU kernel: on 2 CPUs it stepped 135M parameters in 80-88 ms
        against DeepSpeed's CPU Adam's 75-78 (two runs), to the same weights within 6e-8
        (`benchmarks/offload_adam.py`), without that op's C++ build (a minute of 2 CPUs on every
        new machine, and a compiler on every node). `deepspeed_config` turns off DeepSpeed's
        refusal of a torch optimizer there."""
        offloaded = "offload_optimizer" in self.ds_config.get("zero_optimization", {})
        return torch.optim.AdamW(
            trainable, lr=self.settings.lr, weight_decay=self.settings.weight_decay, fused=offloaded or None
        )

    def set_records(self, records: list[dict[str, Any]]) -> int:
        """Hold this round's distillation records (sent once per round, not once per step)."""
        self.records = records
        return len(records)

    def train_steps(self, batches: list[list[int]], lrs: list[float]) -> list[dict[str, float]]:
        """Several optimizer steps in one call. Fewer round trips to the driver: per-step
        calls cost more than a tiny model's step.

        `batches` are the GLOBAL batches, lists of indices into `set_records`, the same on
        every rank; this rank trains on its share `batch[rank::world_size]` and normalizes by
        the answer tokens of the whole batch. Returns `train_step`'s statistics per step:
        combine the ranks' with `combine_rank_stats`.
        """
        steps = []
        for batch, lr in zip(batches, lrs):
            records = [self.records[i] for i in batch]
            steps.append(self.train_step(records[self.rank :: self.world_size], lr, answer_token_count(records)))
        return steps

    def train_step(
        self, records: list[dict[str, Any]], lr: float, global_answer_tokens: int | None = None
    ) -> dict[str, float]:
        """One optimizer step on this rank's share `records` of a global batch with
        `global_answer_tokens` answer tokens in all (see `rank_loss`).

        None: every rank is taken to hold as many answer tokens as this one (world_size
        times its own count), which makes the step the mean of the ranks' per-token means:
        exact with one rank, or with equal counts on all.

        Returns this rank's part of the step: "loss", its per-token loss sum divided by
        `global_answer_tokens` (the sum over ranks is the global per-token mean);
        "answer_tokens" and "tokens", its counts; "token_accuracy", over its answer tokens
        (weigh the ranks' by "answer_tokens"). `combine_rank_stats` does both.
        """
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = {k: v.to(self.device) for k, v in collate(records, self.pad_id, self.settings.pack_tokens).items()}
        answer_tokens = len(batch["rows"])
        if global_answer_tokens is None:
            global_answer_tokens = answer_tokens * self.world_size
        self.engine.train()
        logits = answer_logits(self.engine, batch)
        # Sampled soft labels draw from a stream fixed by seed, rank and step: a resumed run draws the same.
        generator = torch.Generator(device=self.device).manual_seed(
            hash((self.seed, self.rank, self.engine.global_steps)) % 2**63
        )
        loss = rank_loss(self.settings.loss, logits, batch, self.world_size, global_answer_tokens, generator)
        # Every rank learns whether any rank's loss is non-finite, so all stop together: a rank
        # that went on to backward alone would wait forever in the gradient all-reduce.
        finite = torch.tensor([float(torch.isfinite(loss))], device=self.device)
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if finite.item() == 0:
            raise FloatingPointError(
                f"rank {self.rank}: a rank's loss is not finite (this rank's: {loss.item()}); "
                "all ranks stopped before the update"
            )
        self.engine.backward(loss)
        self.engine.step()
        with torch.no_grad():
            accuracy = (logits.argmax(-1) == batch["target_ids"]).float().mean().item()
        return {
            "loss": loss.item() / self.world_size,  # undo the world_size that DeepSpeed's average divides out
            "tokens": sum(len(r["input_ids"]) for r in records),
            "answer_tokens": answer_tokens,
            "token_accuracy": accuracy,
        }

    def memory_stats(self) -> dict[str, int]:
        """This rank's peak memory: allocated device memory on GPU; on CPU the peak resident
        set size, and the resident size before the model was loaded (the process's base)."""
        if self.device.type == "cuda":
            return {"peak_bytes": torch.cuda.max_memory_allocated(), "base_bytes": 0}
        import resource

        return {
            "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "base_bytes": self.rss_before_model,
        }

    def save_state(self, folder: str) -> None:
        """This rank's part of the training state (weights, optimizer, step) under `folder`.
        Every rank must call this; the driver commits the folder once all have returned."""
        # A LoRA rank saves its adapters and their optimizer state: the base weights never change.
        self.engine.save_checkpoint(
            folder, tag="trainer", save_latest=False, exclude_frozen_parameters=self.settings.lora is not None
        )
        # Nothing draws from the global generators yet (the sampled soft labels use a
        # generator seeded per step), but a model with dropout would: resume restores them.
        write_json_atomic(Path(folder) / f"rng_rank{self.rank}.json", rng_state())

    def load_state(self, folder: str) -> None:
        """Load what `save_state` wrote; every rank must call this."""
        path, _ = self.engine.load_checkpoint(
            folder, tag="trainer", load_lr_scheduler_states=False, load_module_strict=self.settings.lora is None
        )
        if path is None:
            raise FileNotFoundError(f"{folder}: no trainer state for rank {self.rank}")
        set_rng_state(json.loads((Path(folder) / f"rng_rank{self.rank}.json").read_text()))

    def _weights(self) -> list[WeightEntry]:
        """The weights the engines load, each with the parameters it is made of."""
        module = self.engine.module
        if self.settings.lora is None:
            return [WeightEntry(name, [p]) for name, p in module.named_parameters()]
        return weight_entries(module)

    def _buckets(self) -> list[list[WeightEntry]]:
        """The weights in buckets of at most sync.bucket_mb, in order."""
        full_bytes = lambda w: getattr(w.params[0], "ds_numel", w.params[0].numel()) * w.params[0].element_size()  # noqa: E731
        named = [(w.name, w) for w in self._weights()]
        return [[w for _, w in b] for b in buckets(named, self.settings.bucket_mb * 2**20, full_bytes)]

    def _gathered(self, params: list[torch.nn.Parameter]) -> Any:
        """A context in which `params` are whole: under ZeRO-3 one collective gathers them (and
        frees them again after), so every rank must enter it."""
        import deepspeed

        if self.engine.zero_optimization_stage() < 3:
            return contextlib.nullcontext()
        return deepspeed.zero.GatheredParameters(params)

    def _full_buckets(self) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """Each bucket's weights, whole (and merged with their adapters). Every rank must iterate."""
        for bucket in self._buckets():
            with self._gathered([p for w in bucket for p in w.params]):
                yield [(w.name, w.full()) for w in bucket]

    def weight_plan(self) -> list[BucketPlan]:
        """The buckets `broadcast_weights` sends: each tensor's name, dtype and full shape."""
        return [
            [plan_entry(w.name, w.params[0].dtype, getattr(w.params[0], "ds_shape", w.params[0].shape)) for w in bucket]
            for bucket in self._buckets()
        ]

    def export_weights(self) -> PackedWeights | None:
        """Full weights in Hugging Face names as numpy arrays (a LoRA student's merged), on
        rank 0 only. Every rank must call this: under ZeRO-3 each bucket is gathered collectively."""
        if self.engine.zero_optimization_stage() < 3 and self.settings.lora is None:
            # Full parameters on every rank: hand Ray views of them, and its out-of-band
            # serialization of the return value is the only copy.
            return pack(self.engine.module.named_parameters(), copy=False) if self.rank == 0 else None
        named = []  # rank 0 keeps a CPU copy of each gathered parameter (a merged weight is one already)
        for bucket in self._full_buckets():
            if self.rank == 0:
                named += [(name, t.detach().to("cpu", copy=isinstance(t, torch.nn.Parameter))) for name, t in bucket]
        return pack(named, copy=False) if self.rank == 0 else None

    def export_adapter(self) -> tuple[PackedWeights, dict[str, Any]] | None:
        """A LoRA student's adapter in peft's names, and its adapter_config.json, on rank 0
        only. Every rank must call this (gathered under ZeRO-3)."""
        named = adapter_parameters(self.engine.module)
        with self._gathered([p for _, p in named]):
            if self.rank != 0:
                return None
            return pack([(name, p.detach()) for name, p in named], copy=True), adapter_config(self.engine.module)

    def broadcast_weights(self, group: SyncGroup) -> None:
        """Send the full weights to the engines' sync group as rank 0 of it (`sync/broadcast.py`).
        Every rank must call this; only rank 0 joins the group and sends."""
        members = open_group(group, 0) if self.rank == 0 else None
        try:
            for bucket in self._full_buckets():
                if members is not None:
                    members.broadcast(pack_bucket([t for _, t in bucket]), 0).wait()
        finally:
            if members is not None:
                close_group(members, group.backend)
