"""The run config: typed sections with defaults, loaded from YAML plus dotted overrides.

The defaults are the embedded default run (`cdscale run` with no config): scratchpad
addition on the bootstrapped tiny model, on a local Ray cluster, on CPU.
`cdscale config` prints every field with its value and meaning.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


def _f(default: Any, help: str, choices: tuple | None = None, factory: Any = None) -> Any:
    meta = {"help": help, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass
class ModelConfig:
    path: str = _f(
        "tiny-addition",
        "model folder, or a prepared name: tiny-addition (cdscale bootstrap), smollm2-135m (cdscale prepare-model)",
    )
    dtype: str = _f(
        "float32",
        "weights dtype for engines and trainers (trainers keep float32 master weights for bfloat16 and float16); "
        "auto: bfloat16 where it is computed natively (engines or ranks on GPUs: set float16 on GPUs older than "
        "Ampere; or a CPU with AVX-512 BF16 or AMX by /proc/cpuinfo), float32 elsewhere, where it would be "
        "emulated; a run's config.yaml records the choice",
        ("float32", "bfloat16", "float16", "auto"),
    )


@dataclass
class TaskConfig:
    name: str = _f("addition", "registered task name, or 'package.module:Class'")
    options: dict = _f(
        None,
        "keyword arguments of the task (a mapping given here replaces these defaults as a whole)",
        factory=lambda: {"min_digits": 1, "max_digits": 3},
    )


@dataclass
class OperationConfig:
    name: str = _f(
        "", "label in the summary, the data and the eval files (default: the task's name); unique in the run"
    )
    task: TaskConfig | None = _f(None, "the operation's task: name and options (default: the task section)")
    num_train: int | None = _f(
        None,
        "raw inputs drawn per round for this operation (default: data.num_train); "
        "0: evaluated only, e.g. a wrong task id (H3)",
    )
    num_eval: int | None = _f(
        None,
        "held-out inputs this operation is scored on (default: data.num_eval); 0: trained, never scored, e.g. a "
        "fixed file of labelled problems for a baseline while another operation scores the task",
    )
    inputs: str = _f(
        "own",
        "own: x ~ this task's D (the paper's 'naive'); mixed: x ~ a uniform mixture of the D of every operation "
        "in the stage, prompted with this operation's templates (the paper's 'mixed', H3); synthetic: x sampled "
        "from the teacher engines, few-shot prompted with inputs from D (paper 3.1-3.2), deduplicated; "
        "demonstrations: x ~ the task's fixed in-context examples, those its teacher prompts show (with targets: "
        "gold, direct gradient descent on the same examples, H4)",
        ("own", "mixed", "synthetic", "demonstrations"),
    )
    targets: str = _f(
        "teacher",
        "teacher: distil the teacher's distribution on f(y); gold: supervised, the student prompt then the gold "
        "answer (direct gradient descent, H4; 'Dir' and replay data, H6-H7); gold_demonstration: supervised, the "
        "teacher prompt then the task's gold demonstration, e.g. a scratchpad ('Sc', H6); text: the student prompt "
        "itself as plain language-modelling data (replay mixing against forgetting, H7)",
        ("teacher", "gold", "gold_demonstration", "text"),
    )
    source: str | None = _f(
        None,
        "where the responses y come from (default: data.source): teacher, student or mixed",
        (None, "teacher", "student", "mixed"),
    )
    student_fraction: float | None = _f(None, "mixed: the share of inputs the student answers (default: data's)")
    ensemble: int = _f(
        1,
        "teacher prompts per input (H5): each teacher sample is scored under this many prompt variants (e.g. other "
        "subsets of in-context examples) and the student's target is the per-token mean of their distributions",
    )
    synthetic_shots: int = _f(4, "synthetic: example inputs from D shown in each generation prompt")
    synthetic_temperature: float = _f(1.0, "synthetic: sampling temperature of the generated inputs")
    synthetic_max_new_tokens: int = _f(
        48, "synthetic: cap on a generated input's length in tokens (a line cut off is dropped)"
    )
    synthetic_max_passes: int = _f(
        4, "synthetic: generations to fill num_train after drops (malformed, duplicate, held out)"
    )
    synthetic_top_up: int | None = _f(
        None, "own: synthetic inputs added each round (default: data's, for an operation with inputs: own that trains)"
    )


@dataclass
class StageConfig:
    name: str = _f("", "label of the stage (default: stage<k>)")
    rounds: int = _f(1, "distillation rounds of this stage")
    operations: list[OperationConfig] = _f(
        None,
        "operations distilled together (simultaneous): their examples form one shuffled mixture, one loss",
        factory=list,
    )


@dataclass
class DataConfig:
    num_train: int = _f(65536, "raw inputs x ~ D drawn per round for distillation")
    num_eval: int = _f(500, "held-out inputs for evaluation (disjoint from training inputs)")
    num_validation: int = _f(
        0,
        "held-out inputs, disjoint from the training and the evaluation inputs, that student.until_accuracy is "
        "checked on (0: none)",
    )
    seed: int = _f(0, "seed for inputs, sampling and initialisation")
    synthetic_top_up: int = _f(
        0,
        "synthetic inputs added each round to the num_train inputs from D of an operation with inputs: own, "
        "sampled from the engines as inputs: synthetic samples them (few-shot prompted with inputs from D, "
        "deduplicated, none held out): more variety than a small dataset has. 0: none",
    )
    source: str = _f(
        "teacher",
        "where the responses y that targets are built on come from. teacher: sampled from the teacher with the "
        "context (the paper, off-policy); student: sampled from the student without it, and the teacher, reading "
        "the same y after the context, gives its distribution at every position (on-policy, GKD); mixed: each "
        "input goes to the student with probability student_fraction, else to the teacher",
        ("teacher", "student", "mixed"),
    )
    student_fraction: float = _f(0.5, "mixed: the probability that an input's response is the student's (GKD lambda)")
    refresh_every_steps: int = _f(
        0,
        "split each round into refreshes of this many optimizer steps: before each, the engines take the "
        "trainers' weights and generate that refresh's responses (on-policy means the current student's); a stop "
        "commits mid-refresh as mid-round. 0: one generation per round",
    )
    teacher_reasoning: str = _f(
        "sampled",
        "on-policy, for a task whose teacher reasons before answering (a scratchpad): what the teacher reads "
        "before the student's answer. sampled: its own reasoning, sampled per input (the paper's teacher); gold: "
        "the reasoning of the task's gold demonstration, with no generation (TRL SDFT's privileged context)",
        ("sampled", "gold"),
    )


@dataclass
class TeacherConfig:
    num_engines: int = _f(2, "vLLM engine actors (on CPU each decodes on one core)")
    cpus_per_engine: float = _f(1.0, "Ray CPUs reserved per engine")
    gpus_per_engine: float = _f(0.0, "Ray GPUs reserved per engine (0 on CPU)")
    tensor_parallel_size: int = _f(
        1,
        "workers per engine, the model's layers split across them (vLLM tensor parallelism): on GPUs one GPU each "
        "(gpus_per_engine must equal it), on CPU one process each",
    )
    placement: str = _f(
        "PACK",
        "Ray placement-group strategy over the engines' bundles (one bundle per engine): PACK fills few nodes, SPREAD "
        "spreads over nodes, STRICT_* insists",
        PLACEMENT_STRATEGIES,
    )
    mode: str = _f(
        "frozen",
        "frozen: teacher stays the initial weights (paper); recursive: the student becomes the next round's teacher",
        ("frozen", "recursive"),
    )
    temperature: float = _f(1.0, "sampling temperature of the teacher's outputs y")
    top_k: int = _f(20, "teacher logprobs kept per answer token")
    max_new_tokens: int = _f(160, "cap on teacher generation length (scratchpad included)")
    max_model_len: int = _f(512, "engine context length")
    kv_cache_gib: float = _f(
        1.0, "KV cache size per engine in GiB (explicit, so it does not depend on other processes' memory)"
    )
    enable_prefix_caching: bool = _f(True, "reuse the KV cache of shared prompt prefixes")
    enforce_eager: bool = _f(
        False,
        "run the engines eagerly (vLLM's enforce_eager, and no torch.compile of its sampler either): no compile at "
        "start-up or first use (and no CUDA graphs on GPUs); an engine starts sooner and decodes more slowly, and on "
        "a GPU its logprobs' ranks take a temporary the size of the logprobs. For tiny models and tests",
    )
    max_num_seqs: int = _f(512, "sequences an engine decodes at once (larger batches amortize per-step overhead)")
    max_answer_skip_fraction: float = _f(
        0.5,
        "fail the round when a larger fraction of its inputs is skipped "
        "(no extractable answer, cut off, unaligned, prompt too long)",
    )
    chunk_size: int = _f(
        2048,
        "prompts per engine call "
        "(progress granularity and load balancing; an engine that dies redoes only its current chunk)",
    )
    max_engine_restarts: int = _f(
        3, "engines that may die in a run and be replaced (with the current weights) before the run fails"
    )


@dataclass
class LoraConfig:
    r: int = _f(0, "LoRA rank; 0: no adapter, every weight trains (full fine-tuning)")
    alpha: float = _f(32.0, "LoRA scale numerator: the update added to a weight is (alpha / r) B A")
    dropout: float = _f(0.0, "dropout on the adapters' input while training; in [0, 1)")
    target_modules: list[str] = _f(
        None,
        "the modules that get an adapter, by name (q_proj, v_proj, ...); [all-linear]: every linear layer but the "
        "output head",
        factory=lambda: ["all-linear"],
    )
    sync: str = _f(
        "adapter",
        "what a sync moves into the engines: adapter, only the adapter (a few MB), which the engines apply per "
        "request (vLLM LoRA) while the base weights stay the teacher's; merged, the base weights with the adapter "
        "merged in, by sync.transport, for engines without LoRA support",
        ("adapter", "merged"),
    )

    @property
    def adapter_sync(self) -> bool:
        """A LoRA student whose syncs move the adapter alone (the engines serve it with vLLM LoRA)."""
        return self.r > 0 and self.sync == "adapter"


@dataclass
class StudentConfig:
    num_ranks: int = _f(2, "DeepSpeed ranks, one Ray actor each")
    cpus_per_rank: float = _f(
        1.0,
        "Ray CPUs reserved per rank; Ray gives the rank as many torch threads (OMP_NUM_THREADS), so one rank on a "
        "laptop trains on one core unless given more",
    )
    gpus_per_rank: float = _f(0.0, "Ray GPUs reserved per rank (0 on CPU)")
    placement: str = _f(
        "PACK",
        "Ray placement-group strategy over the ranks' bundles (one bundle per rank): PACK keeps the gradient "
        "all-reduce on few nodes, SPREAD / STRICT_SPREAD put ranks on different nodes",
        PLACEMENT_STRATEGIES,
    )
    zero_stage: int = _f(2, "DeepSpeed ZeRO stage", (1, 2, 3))
    offload: str = _f(
        "none",
        "ZeRO-Offload for GPU ranks: optimizer keeps the optimizer states in CPU memory and steps them there "
        "(torch's fused CPU AdamW; ZeRO-2 or 3); optimizer_and_params also keeps the "
        "parameters there between uses (ZeRO-3). Less GPU memory for a slower step; on CPU ranks nothing moves",
        ("none", "optimizer", "optimizer_and_params"),
    )
    loss: str = _f(
        "forward_kl_topk",
        "forward_kl_topk: KL(teacher || student) on the teacher's top-k plus a tail bucket; sampled_soft: the paper's "
        "label, the empirical distribution of soft_label_samples teacher draws per position; jsd: generalized "
        "Jensen-Shannon with weight jsd_beta on the teacher; hard: NLL of the teacher's tokens f(y); "
        "reverse_kl_sampled: KL(student || teacher) estimated on the student's own sampled tokens (data source: "
        "student only), with importance ratios clipped by ratio_clip",
        ("forward_kl_topk", "sampled_soft", "jsd", "hard", "reverse_kl_sampled"),
    )
    temperature: float = _f(
        1.0, "softens teacher and student in the soft losses (loss scaled by T^2); not used by hard"
    )
    jsd_beta: float = _f(0.5, "jsd: weight of the teacher in the mixture m = beta p + (1 - beta) q; in (0, 1)")
    soft_label_samples: int = _f(100, "sampled_soft: teacher draws per position (paper: 100)")
    ratio_clip: float = _f(
        0.2,
        "reverse_kl_sampled: the importance ratio p_now(y) / p_sampled(y) of a stale sample is clipped to "
        "[1 - ratio_clip, 1 + ratio_clip] (PPO-style)",
    )
    lr: float = _f(6e-4, "peak learning rate (AdamW); the demo's, chosen in docs/results.md#learning-rate-of-the-demo")
    weight_decay: float = _f(0.0, "AdamW weight decay (paper: 0)")
    warmup_steps: int = _f(50, "linear warm-up steps, then cosine decay to 10% of lr")
    batch_size: int = _f(
        64,
        "global batch size (sequences), split evenly across ranks; the demo's, chosen in "
        "docs/results.md#batch-size-of-the-demo",
    )
    epochs: int = _f(3, "passes over each round's distillation data")
    until_accuracy: float = _f(
        0.0,
        "train to a criterion: after `epochs`, while the student's greedy accuracy on the validation inputs "
        "(data.num_validation) of any of the round's scored operations (num_eval > 0) is below this, train one "
        "more epoch and check again, at most max_extra_epochs times. Each extra epoch is a warm restart: the "
        "cosine again from student.lr down to its last rate. The evaluation's inputs (data.num_eval) are not "
        "looked at. 0: exactly `epochs`",
    )
    max_extra_epochs: int = _f(2, "until_accuracy: the most epochs trained after `epochs`")
    grad_clip: float = _f(1.0, "gradient norm clip")
    steps_per_call: int = _f(
        25, "optimizer steps per call to the rank actors (fewer round trips; progress granularity)"
    )
    gradient_checkpointing: bool = _f(
        False,
        "recompute each layer's activations in the backward pass instead of keeping them: less memory, "
        "one more forward's compute",
    )
    pack_tokens: int = _f(
        0,
        "pack each rank's share of a batch into rows of at most this many tokens (first fit, longest first; "
        "position ids restart per sequence, so no token attends to another sequence's) instead of padding every "
        "sequence to the longest. It saves the padding's compute where attention skips pairs across sequences "
        "(flash attention's varlen path on GPUs); CPU attention computes them, and there it measured 10% faster "
        "at best (docs/performance.md). 0: pad, no packing",
    )
    lora: LoraConfig = _f(None, "a LoRA student (peft): only adapters train, the base weights stay", factory=LoraConfig)


@dataclass
class SyncConfig:
    transport: str = _f(
        "auto",
        "how trainer weights reach the engines after training. object_store: rank 0's weights through Ray's object "
        "store (any placement); broadcast: rank 0 broadcasts packed buckets to every engine over a process group of "
        "their own, gloo on CPU and NCCL on GPUs (trainers and engines must not share a GPU); auto: broadcast when "
        "trainers and engines have whole GPUs of their own, else object_store",
        ("auto", "object_store", "broadcast"),
    )
    bucket_mb: int = _f(512, "MiB of full weights per bucket: per ZeRO-3 gather collective, and per broadcast")


@dataclass
class EvalConfig:
    max_new_tokens_student: int = _f(16, "cap on the student's direct-answer length")
    before: bool = _f(
        True,
        "evaluate teacher and student before distillation (a chat task's context gap and drift are measured "
        "before either way: they need the model before as their reference)",
    )
    every_refreshes: int = _f(
        0,
        "also evaluate the student on the stage's scored operations at every N-th refresh of a round "
        "(data.refresh_every_steps), into the summary's curve: a learning curve from one run. On-policy the "
        "engines hold the student there anyway; otherwise each costs a sync and the teacher's reload (0: after "
        "each round only)",
    )


@dataclass
class RunConfig:
    name: str = _f("addition", "run name; the run directory is output_root/name")
    output_root: str = _f("runs", "where run directories are created")
    rounds: int = _f(1, "distillation rounds (generate, train, sync, evaluate)")
    ray_address: str | None = _f(None, "join this Ray cluster; default: start a local one")
    dashboard: bool = _f(
        True,
        "start the local Ray cluster's dashboard (the run's actors, logs and cdscale_* metrics in a browser); "
        "false: one process fewer, for headless batch runs",
    )
    dashboard_host: str = _f("127.0.0.1", "host the local Ray dashboard binds to")
    metrics_export_port: int | None = _f(
        None,
        "port where the local Ray node serves its metrics (cdscale_* among them) to Prometheus; default: Ray picks one",
    )
    timeout_s: float = _f(3600.0, "timeout of each remote call, so a dead actor is an error, not a hang")
    max_trainer_restarts: int = _f(
        2, "times the trainer ranks may be restarted from the last commit after one dies, before the run fails"
    )
    save_by_s: float | None = _f(
        None,
        "stop at the next safe point (saving the state) once this many seconds have passed; set it below the "
        "job's wall time, minus the time a save takes. SIGTERM does the same at any time",
    )


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    stages: list[StageConfig] = _f(
        None,
        "sequential stages, each starting from the student the previous one left; empty: one stage of `task` "
        "for run.rounds rounds",
        factory=list,
    )

    @property
    def run_dir(self) -> Path:
        # Absolute, so a job submitted to a cluster writes where its launcher expects.
        return Path(self.run.output_root).resolve() / self.run.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """A config that cannot run; the CLI reports it without a traceback (exit 2)."""


class RunDirDamaged(ValueError):
    """A file of a run directory that cdscale wrote is not what it wrote (changed by hand, a disk fault)."""


class RunFailed(RuntimeError):
    """A run that cannot go on with what it got (too many inputs skipped, engines that keep
    dying); the last commit stays. The CLI reports it without a traceback (exit 1)."""


def _coerce(path: str, value: Any, typ: Any, meta: dict) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        typ = args[0]
    if typ is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
    elif typ is int:
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                pass
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
    elif typ is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        value = float(value)
    elif typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
    elif typ is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{path}: {value!r} is not allowed; allowed values: {list(choices)}")
    return value


def _build(cls: type, data: dict, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown field; allowed fields: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        f, typ = known[name], hints[name]
        optional = (
            [a for a in typing.get_args(typ) if a is not type(None)]
            if typing.get_origin(typ) in (typing.Union, types.UnionType)
            else []
        )
        if value is not None and len(optional) == 1 and dataclasses.is_dataclass(optional[0]):
            typ = optional[0]  # an optional section that was given
        if dataclasses.is_dataclass(typ):
            kwargs[name] = _build(typ, value, f"{prefix}{name}.")
        elif typing.get_origin(typ) is list:
            if not isinstance(value, list):
                raise ConfigError(f"{prefix}{name}: expected a list, got {value!r}")
            item = typing.get_args(typ)[0]
            kwargs[name] = [
                _build(item, v, f"{prefix}{name}[{i}].")
                if dataclasses.is_dataclass(item)
                else _coerce(f"{prefix}{name}[{i}]", v, item, {})
                for i, v in enumerate(value)
            ]
        else:
            kwargs[name] = _coerce(f"{prefix}{name}", value, typ, dict(f.metadata))
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
        if not isinstance(tree, dict):
            raise ConfigError(f"{dotted}: {key} is not a section")
    tree[keys[-1]] = value


def _check_counts(cfg: Config) -> None:
    """Settings that count something (inputs, engines, ranks, steps, ...) need at least one."""
    positive = {
        "data.num_train": cfg.data.num_train,
        "data.num_eval": cfg.data.num_eval,
        "teacher.num_engines": cfg.teacher.num_engines,
        "teacher.top_k": cfg.teacher.top_k,
        "teacher.tensor_parallel_size": cfg.teacher.tensor_parallel_size,
        "teacher.max_new_tokens": cfg.teacher.max_new_tokens,
        "teacher.chunk_size": cfg.teacher.chunk_size,
        "teacher.max_model_len": cfg.teacher.max_model_len,
        "teacher.max_num_seqs": cfg.teacher.max_num_seqs,
        "eval.max_new_tokens_student": cfg.eval.max_new_tokens_student,
        "student.num_ranks": cfg.student.num_ranks,
        "student.batch_size": cfg.student.batch_size,
        "student.epochs": cfg.student.epochs,
        "run.rounds": cfg.run.rounds,
        "student.steps_per_call": cfg.student.steps_per_call,
        "sync.bucket_mb": cfg.sync.bucket_mb,
    }
    for path, value in positive.items():
        if value < 1:
            raise ConfigError(f"{path}: must be at least 1, got {value}")


def _check_actor_resources(cfg: Config) -> None:
    """What each engine and rank reserves, and whether the weight transport and the teacher's
    tensor parallelism fit those devices."""
    for where, cpus, gpus in (
        (
            "teacher.cpus_per_engine and teacher.gpus_per_engine",
            cfg.teacher.cpus_per_engine,
            cfg.teacher.gpus_per_engine,
        ),
        ("student.cpus_per_rank and student.gpus_per_rank", cfg.student.cpus_per_rank, cfg.student.gpus_per_rank),
    ):
        if cpus < 0 or gpus < 0 or cpus + gpus == 0:
            raise ConfigError(f"{where}: must not be negative, and not both 0 (each actor reserves something)")
    weight_transport(cfg)
    tp, gpus = cfg.teacher.tensor_parallel_size, cfg.teacher.gpus_per_engine
    if tp > 1 and gpus > 0 and gpus != tp:
        raise ConfigError(
            f"teacher.gpus_per_engine: {gpus} GPUs for teacher.tensor_parallel_size={tp} workers; "
            "each worker takes one GPU"
        )


def _check_lora(lora: LoraConfig) -> None:
    if lora.r < 0:
        raise ConfigError(f"student.lora.r: must not be negative (0: no adapter), got {lora.r}")
    if not (lora.alpha > 0 and math.isfinite(lora.alpha)):
        raise ConfigError(f"student.lora.alpha: must be positive, got {lora.alpha}")
    if not 0 <= lora.dropout < 1:
        raise ConfigError(f"student.lora.dropout: must be in [0, 1), got {lora.dropout}")
    if not lora.target_modules or not all(lora.target_modules):
        raise ConfigError(f"student.lora.target_modules: name at least one module, got {lora.target_modules}")
    # The engines compute logits without vLLM's LoRA wrapper (teacher/worker_extension.py).
    untrainable = [m for m in lora.target_modules if m.split(".")[-1] in ("lm_head", "embed_tokens")]
    if untrainable:
        raise ConfigError(
            f"student.lora.target_modules: {untrainable[0]}: adapters on the output head or the embeddings are "
            "not supported (the engines score prompts without vLLM's LoRA on the head)"
        )


def validate(cfg: Config) -> Config:
    """Range checks and checks that involve more than one field."""
    _check_counts(cfg)
    if cfg.data.num_train < cfg.student.batch_size:
        raise ConfigError(
            f"data.num_train: {cfg.data.num_train} is below student.batch_size={cfg.student.batch_size}; "
            "no full batch could be trained"
        )
    if cfg.teacher.max_new_tokens >= cfg.teacher.max_model_len:
        raise ConfigError(
            f"teacher.max_new_tokens: {cfg.teacher.max_new_tokens} leaves no room for a prompt in "
            f"teacher.max_model_len={cfg.teacher.max_model_len}"
        )
    if not 0 <= cfg.teacher.max_answer_skip_fraction <= 1:
        raise ConfigError(
            f"teacher.max_answer_skip_fraction: must be in [0, 1], got {cfg.teacher.max_answer_skip_fraction}"
        )
    if cfg.teacher.temperature < 0 or cfg.student.warmup_steps < 0:
        raise ConfigError("teacher.temperature and student.warmup_steps: must not be negative")
    _check_memory_features(cfg.student)
    if cfg.student.batch_size % cfg.student.num_ranks:
        raise ConfigError(
            f"student.batch_size: {cfg.student.batch_size} does not split evenly across "
            f"student.num_ranks={cfg.student.num_ranks}"
        )
    _check_actor_resources(cfg)
    if cfg.teacher.kv_cache_gib <= 0:
        raise ConfigError(f"teacher.kv_cache_gib: must be positive, got {cfg.teacher.kv_cache_gib}")
    _check_loss(cfg.student)
    if cfg.data.refresh_every_steps < 0:
        raise ConfigError(
            f"data.refresh_every_steps: must not be negative (0: once per round), got {cfg.data.refresh_every_steps}"
        )
    if cfg.eval.every_refreshes < 0 or (cfg.eval.every_refreshes and not cfg.data.refresh_every_steps):
        raise ConfigError(
            f"eval.every_refreshes: must be 0, or positive with data.refresh_every_steps set; got "
            f"{cfg.eval.every_refreshes} with data.refresh_every_steps={cfg.data.refresh_every_steps}"
        )
    _check_lora(cfg.student.lora)
    if cfg.run.max_trainer_restarts < 0:
        raise ConfigError(f"run.max_trainer_restarts: must not be negative, got {cfg.run.max_trainer_restarts}")
    if cfg.run.timeout_s <= 0 or (cfg.run.save_by_s is not None and cfg.run.save_by_s <= 0):
        raise ConfigError(
            f"run.timeout_s and run.save_by_s: must be positive, got {cfg.run.timeout_s} and {cfg.run.save_by_s}"
        )
    for section, values in cfg.to_dict().items():
        for name, value in values.items() if isinstance(values, dict) else ():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{section}.{name}: must be a finite number, got {value}")
    stages = resolve_stages(cfg)
    _check_loss_source(cfg.student, stages)
    _check_teacher_reasoning(cfg.data, stages)
    _check_criterion(cfg, stages)
    return cfg


def _check_memory_features(s: StudentConfig) -> None:
    """ZeRO-Offload moves what the ZeRO stage partitions; packing takes a row length."""
    if s.offload != "none" and s.zero_stage < (3 if s.offload == "optimizer_and_params" else 2):
        raise ConfigError(
            f"student.offload: {s.offload} needs student.zero_stage "
            f"{'3' if s.offload == 'optimizer_and_params' else '2 or 3'}, got {s.zero_stage}"
        )
    if s.pack_tokens < 0:
        raise ConfigError(f"student.pack_tokens: must not be negative (0: no packing), got {s.pack_tokens}")


def _check_criterion(cfg: Config, stages: list[StageConfig]) -> None:
    """Training to an accuracy needs inputs to measure it on, in every stage, and room to train further."""
    s, data = cfg.student, cfg.data
    if data.num_validation < 0 or s.max_extra_epochs < 0:
        raise ConfigError(
            f"data.num_validation and student.max_extra_epochs: must not be negative, got {data.num_validation} "
            f"and {s.max_extra_epochs}"
        )
    if not 0 <= s.until_accuracy <= 1:
        raise ConfigError(
            f"student.until_accuracy: must be in [0, 1] (0: exactly student.epochs), got {s.until_accuracy}"
        )
    if not s.until_accuracy:
        return
    if data.num_validation < 1 or s.max_extra_epochs < 1:
        raise ConfigError(
            f"student.until_accuracy: {s.until_accuracy} needs data.num_validation and student.max_extra_epochs "
            f"of at least 1, got {data.num_validation} and {s.max_extra_epochs}"
        )
    if data.refresh_every_steps:
        raise ConfigError(
            "student.until_accuracy: a round split into refreshes (data.refresh_every_steps) trains each refresh's "
            "own data; train to a criterion with one generation per round (data.refresh_every_steps=0)"
        )
    for k, stage in enumerate(stages):
        if not any(op.num_train and op.num_eval for op in stage.operations):
            raise ConfigError(
                f"student.until_accuracy: stage {stage.name!r} (stages[{k}]) trains only operations with num_eval 0, "
                "so nothing measures the criterion"
            )


def _check_loss(s: StudentConfig) -> None:
    if not 0 < s.jsd_beta < 1:
        raise ConfigError(f"student.jsd_beta: must be in (0, 1), got {s.jsd_beta}")
    if s.temperature <= 0 or s.soft_label_samples < 1:
        raise ConfigError(
            f"student.temperature and student.soft_label_samples: must be positive, got "
            f"{s.temperature} and {s.soft_label_samples}"
        )
    if s.lr <= 0:
        raise ConfigError(f"student.lr: must be positive, got {s.lr}")
    if not 0 < s.ratio_clip < 1:
        raise ConfigError(f"student.ratio_clip: must be in (0, 1), got {s.ratio_clip}")


def _check_loss_source(s: StudentConfig, stages: list[StageConfig]) -> None:
    if s.loss == "reverse_kl_sampled":
        sampled_elsewhere = [
            op.name for stage in stages for op in stage.operations if op.num_train and op.source != "student"
        ]
        if sampled_elsewhere:
            raise ConfigError(
                f"student.loss: reverse_kl_sampled is an estimate on the student's own samples; operation "
                f"{sampled_elsewhere[0]!r} trains on other responses (its source, or targets, is not the student's)"
            )


def _check_teacher_reasoning(data: DataConfig, stages: list[StageConfig]) -> None:
    on_policy = [op for stage in stages for op in stage.operations if op.num_train and op.source != "teacher"]
    if data.teacher_reasoning == "gold" and not on_policy:
        raise ConfigError(
            "data.teacher_reasoning: gold is what the teacher reads before a student's answer; no operation's "
            "source is student or mixed, so nothing would read it"
        )


def weight_transport(cfg: Config) -> tuple[str, str | None]:
    """The transport `sync.transport` resolves to, and the broadcast's process-group backend
    (None for the object store). A broadcast needs the tensors of both ends on one kind of
    device: NCCL between GPUs, gloo between CPUs."""
    rank_gpus, engine_gpus = cfg.student.gpus_per_rank, cfg.teacher.gpus_per_engine
    # NCCL refuses two members on one GPU: only actors with whole GPUs of their own can broadcast over it.
    whole_gpus = rank_gpus >= 1 and engine_gpus >= 1 and rank_gpus % 1 == 0 and engine_gpus % 1 == 0
    transport = cfg.sync.transport
    if transport == "auto":
        transport = "broadcast" if whole_gpus else "object_store"
    if transport == "object_store":
        return transport, None
    if rank_gpus == engine_gpus == 0:
        return transport, "gloo"
    if not whole_gpus:
        raise ConfigError(
            "sync.transport: broadcast needs trainers and engines both on CPUs or each on whole GPUs of its own "
            f"(student.gpus_per_rank={rank_gpus}, teacher.gpus_per_engine={engine_gpus}); use object_store"
        )
    return transport, "nccl"


def resolve_stages(cfg: Config) -> list[StageConfig]:
    """The run's stages with every default filled in: `stages` as given, or one stage of
    one operation (`task`, data.num_train) for run.rounds rounds."""
    if not cfg.stages:
        operation = OperationConfig(
            name=cfg.task.name,
            task=cfg.task,
            num_train=cfg.data.num_train,
            num_eval=cfg.data.num_eval,
            source=cfg.data.source,
            student_fraction=cfg.data.student_fraction,
            synthetic_top_up=cfg.data.synthetic_top_up,
        )
        _check_source(cfg, operation, "data")
        return [StageConfig(name="main", rounds=cfg.run.rounds, operations=[operation])]
    if cfg.run.rounds != 1:
        raise ConfigError("run.rounds: with stages given, set stages[k].rounds instead")
    stages, names = [], set()
    for k, stage in enumerate(cfg.stages):
        if stage.rounds < 1:
            raise ConfigError(f"stages[{k}].rounds: must be at least 1, got {stage.rounds}")
        if not stage.operations:
            raise ConfigError(f"stages[{k}].operations: a stage needs at least one operation")
        operations = []
        for i, op in enumerate(stage.operations):
            where = f"stages[{k}].operations[{i}]"
            task = op.task or cfg.task
            num_train = cfg.data.num_train if op.num_train is None else op.num_train
            op = dataclasses.replace(
                op,
                name=_operation_name(cfg, op),
                task=task,
                num_train=num_train,
                num_eval=cfg.data.num_eval if op.num_eval is None else op.num_eval,
                source=op.source or cfg.data.source,
                student_fraction=cfg.data.student_fraction if op.student_fraction is None else op.student_fraction,
                synthetic_top_up=_top_up(cfg, op, num_train),
            )
            if op.name in names:
                raise ConfigError(f"{where}.name: {op.name!r} is used twice; operation names are unique in a run")
            _check_operation(cfg, op, where)
            names.add(op.name)
            operations.append(op)
        if not any(op.num_train for op in operations):
            raise ConfigError(f"stages[{k}].operations: every operation has num_train 0; a stage needs one to train")
        stages.append(dataclasses.replace(stage, name=stage.name or f"stage{k}", operations=operations))
    return stages


def count_field(cfg: Config, operation: str, count: str) -> str:
    """Where the resolved operation `operation` took its `count` ("num_train" or "num_eval")
    from: its own entry in `stages`, or the `data` default, so that an error names what to change."""
    for k, stage in enumerate(cfg.stages):
        for i, op in enumerate(stage.operations):
            if _operation_name(cfg, op) == operation and getattr(op, count) is not None:
                return f"stages[{k}].operations[{i}].{count}"
    return f"data.{count}"


def _operation_name(cfg: Config, op: OperationConfig) -> str:
    """An operation's name as given in `stages`, or its task's (its own task, else `task`)."""
    return op.name or (op.task or cfg.task).name


def _check_operation(cfg: Config, op: OperationConfig, where: str) -> None:
    """One resolved operation's own settings (a ConfigError naming the field)."""
    _check_source(cfg, op, where)
    if 0 < op.num_train < cfg.student.batch_size or op.num_train < 0:
        raise ConfigError(
            f"{where}.num_train: {op.num_train} is below student.batch_size={cfg.student.batch_size} (0: evaluate only)"
        )
    if op.num_eval < 0 or op.num_eval == op.num_train == 0:
        raise ConfigError(
            f"{where}.num_eval: {op.num_eval} with num_train {op.num_train}; an operation is trained "
            "(num_train > 0), scored (num_eval > 0) or both"
        )
    for name in ("ensemble", "synthetic_shots", "synthetic_max_new_tokens", "synthetic_max_passes"):
        if getattr(op, name) < 1:
            raise ConfigError(f"{where}.{name}: must be at least 1, got {getattr(op, name)}")
    if not 0 <= op.synthetic_temperature < math.inf:
        raise ConfigError(
            f"{where}.synthetic_temperature: must be a finite number >= 0, got {op.synthetic_temperature}"
        )


def _top_up(cfg: Config, op: OperationConfig, num_train: int) -> int:
    """An operation's synthetic_top_up: its own, or data's where it can take one (own inputs it trains on)."""
    if op.synthetic_top_up is not None:
        return op.synthetic_top_up
    return cfg.data.synthetic_top_up if op.inputs == "own" and num_train else 0


def _check_source(cfg: Config, op: OperationConfig, where: str) -> None:
    """Whether an operation's responses can come from where its `source` says."""
    if not 0 <= op.student_fraction <= 1:
        raise ConfigError(f"{where}.student_fraction: must be in [0, 1], got {op.student_fraction}")
    if op.synthetic_top_up < 0 or (op.synthetic_top_up and (op.inputs != "own" or not op.num_train)):
        raise ConfigError(
            f"{where}.synthetic_top_up: adds synthetic inputs to an operation's own (inputs: own, num_train > 0); "
            f"got {op.synthetic_top_up} with inputs: {op.inputs}, num_train: {op.num_train}"
        )
    if op.num_train and (op.inputs == "synthetic" or op.synthetic_top_up) and cfg.data.refresh_every_steps:
        raise ConfigError(
            f"{where}.inputs: synthetic inputs are drawn once per round and not kept apart from its data; with "
            "data.refresh_every_steps they cannot be split into refreshes (use inputs: own, no synthetic_top_up)"
        )
    if op.source == "teacher" or op.num_train == 0:
        return
    if op.targets != "teacher":
        raise ConfigError(
            f"{where}.source: {op.source} needs targets: teacher (the teacher scores the student's responses); "
            f"targets: {op.targets} has no responses to sample"
        )
    if op.ensemble > 1:
        raise ConfigError(f"{where}.source: {op.source} with ensemble > 1 is not supported; use source: teacher")


def _yaml_problem(err: Exception) -> str:
    """A YAML (or text decoding) error in one line, with where it is."""
    mark = getattr(err, "problem_mark", None)
    if mark is not None:
        return f"{getattr(err, 'problem', None) or 'unparsable'} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(err).split())


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file, then `section.field=value` overrides (YAML-parsed values);
    `model.dtype: auto` becomes the dtype chosen for this machine."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(err)}") from None
        except OSError as err:
            raise ConfigError(f"{path}: cannot be read ({err.strerror})") from None
        if not isinstance(tree, dict):
            raise ConfigError(
                f"{path}: a config is a mapping of sections (model:, data:, teacher:, ...), not a {type(tree).__name__}"
            )
        student = tree.get("student") if isinstance(tree, dict) else None
        if isinstance(student, dict) and "export_bucket_mb" in student:
            # Its name until 2026-11-28: run directories saved before then still resume.
            tree.setdefault("sync", {}).setdefault("bucket_mb", student.pop("export_bucket_mb"))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.field=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"{key.strip()}: the value {raw!r} is not valid YAML: {_yaml_problem(err)}") from None
        if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
            value = raw.strip()  # YAML 1.1 reads on/off/yes/no as booleans: `run.name=off` is a name
        _set_dotted(tree, key.strip(), value)
    cfg = _build(Config, tree, "")
    if cfg.model.dtype == "auto":
        on_gpus = cfg.teacher.gpus_per_engine > 0 or cfg.student.gpus_per_rank > 0
        cfg.model.dtype = "bfloat16" if on_gpus or native_bf16_cpu() else "float32"
    return validate(cfg)


def native_bf16_cpu(cpuinfo: str | None = None) -> bool:
    """Whether this machine's CPU has bfloat16 instructions (AVX-512 BF16 or AMX), by the flags
    in /proc/cpuinfo (Linux; elsewhere False). On the AMD EPYC draw that has them the demo's
    teacher sampling took 124-149 s in bfloat16 against 169-204 s in float32 (2026-12-07,
    docs/results.md#the-demos-run-in-bfloat16)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return not {"avx512_bf16", "amx_bf16"}.isdisjoint(cpuinfo.split())


def describe(cfg: Config) -> str:
    """Every field with its value, allowed values and meaning, as commented YAML."""

    def line(indent: str, f: dataclasses.Field, value: Any) -> str:
        value = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
        choices = f" (one of {list(f.metadata['choices'])})" if f.metadata.get("choices") else ""
        return f"{indent}{f.name}: {text}  # {f.metadata.get('help', '')}{choices}"

    lines = []
    for section in fields(cfg):
        sub = getattr(cfg, section.name)
        if isinstance(sub, list):  # stages: the value, then what a stage and an operation hold
            lines.append(line("", section, [dataclasses.asdict(s) for s in sub]))
            for cls, indent in ((StageConfig, "#   "), (OperationConfig, "#       ")):
                lines += [line(indent, f, getattr(cls(), f.name)) for f in fields(cls)]
            continue
        lines.append(f"{section.name}:")
        for f in fields(sub):
            value = getattr(sub, f.name)
            if dataclasses.is_dataclass(value):  # a subsection (student.lora): a line per field
                lines.append(f"  {f.name}:  # {f.metadata.get('help', '')}")
                lines += [line("    ", g, getattr(value, g.name)) for g in fields(value)]
            else:
                lines.append(line("  ", f, value))
    return "\n".join(lines)
