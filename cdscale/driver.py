"""The driver: one controller that runs the rounds of a distillation run on Ray.

    1 inputs   x ~ D                                   (task, seeded)
    2 teacher  y ~ P(. | T_teacher(x)) with top-k logprobs   (vLLM engine actors)
    3 targets  student ids = T_student(x) + answer tokens of f(y), teacher signal there
    4 train    DeepSpeed ZeRO ranks (Ray actors), forward KL on the top-k + tail
    5 sync     trainer weights -> running engines (no restart)
    6 eval     teacher with context, student without
    7 save     data, metrics, student checkpoint, summary (atomic writes)
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import ray
import yaml

from cdscale.checkpoint import (
    commit_state, copy_dir_atomic, load_latest_state, read_shard, save_hf_checkpoint, write_json_atomic, write_shard,
    write_text_atomic,
)
from cdscale.config import Config, ConfigError, OperationConfig, RunFailed, StageConfig, resolve_stages, weight_transport
from cdscale.eval import evaluate
from cdscale.metrics import MetricsLog
from cdscale.models import resolve_model_path
from cdscale.placement import PlacementGroup, bundle_nodes, in_bundle, release, reserve
from cdscale.preemption import Preempted, StopRequest
from cdscale.report import results_table
from cdscale.student.schedule import warmup_cosine
from cdscale.student.trainer import StudentTrainer
from cdscale.sync import broadcast
from cdscale.sync.object_store import export_weights, push_weights
from cdscale.targets import FlatTopk, average_topk, build_student_record, flatten_topk, gold_record
from cdscale.tasks import Example, Task, build_task, sample_where
from cdscale.teacher.engine import EngineReplacer, generate_across, start_engines
from cdscale.teacher.synthetic_inputs import synthesize_inputs


class PhaseClock:
    """Wall time of a run split into its phases (summed over rounds); the time no phase
    covers is reported as "overhead", so the split always adds up to the whole run."""

    PHASES = ("startup", "sample_inputs", "generate", "targets", "train", "sync", "eval", "checkpoint")

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds = dict.fromkeys(self.PHASES, 0.0)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start

    def split(self) -> dict[str, float]:
        total = time.perf_counter() - self.start
        return {**self.seconds, "overhead": total - sum(self.seconds.values()), "total": total}


def init_ray(cfg: Config) -> None:
    if ray.is_initialized():
        return
    if cfg.run.ray_address:
        ray.init(address=cfg.run.ray_address)
        return
    # The embedded default: a local cluster. Logical CPUs cover every actor (engines and
    # trainers take turns on the cores: generation and training never run at once).
    needed = cfg.teacher.num_engines * cfg.teacher.cpus_per_engine + cfg.student.num_ranks * cfg.student.cpus_per_rank
    ray.init(
        num_cpus=max(os.cpu_count() or 1, math.ceil(needed)),
        include_dashboard=True,
        dashboard_host=cfg.run.dashboard_host,
        _metrics_export_port=cfg.run.metrics_export_port,
    )


def start_trainers(cfg: Config, model_path: str, placement: PlacementGroup | None = None) -> list[Any]:
    """The DeepSpeed ranks, rank i in bundle i of `placement` when given, joined in one process group."""
    s = cfg.student
    ds_config = {
        "train_batch_size": s.batch_size,
        "train_micro_batch_size_per_gpu": s.batch_size // s.num_ranks,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": s.grad_clip,
        "zero_optimization": {"stage": s.zero_stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": cfg.model.dtype == "bfloat16"},
        "fp16": {"enabled": cfg.model.dtype == "float16"},
        "steps_per_print": 10**9,
        "_lr": s.lr,
        "_weight_decay": s.weight_decay,
        "_timeout_s": cfg.run.timeout_s,
        "_bucket_mb": cfg.sync.bucket_mb,
    }
    actor = ray.remote(StudentTrainer)
    trainers = [
        actor.options(num_cpus=s.cpus_per_rank, num_gpus=s.gpus_per_rank, **in_bundle(placement, rank)).remote(
            rank, s.num_ranks, model_path, cfg.model.dtype, ds_config, s.loss, cfg.data.seed,
            {"temperature": s.temperature, "jsd_beta": s.jsd_beta, "soft_label_samples": s.soft_label_samples},
        )
        for rank in range(s.num_ranks)
    ]
    addr, port = ray.get(trainers[0].master_address.remote(), timeout=cfg.run.timeout_s)
    ray.get([t.setup.remote(addr, port) for t in trainers], timeout=cfg.run.timeout_s)
    return trainers


def build_tasks(stages: list[StageConfig]) -> dict[str, Task]:
    """Every operation's task, by operation name (checks each task's options and files now)."""
    return {op.name: build_task(op.task.name, op.task.options) for stage in stages for op in stage.operations}


def sample_splits(
    cfg: Config, stages: list[StageConfig], tasks: dict[str, Task]
) -> tuple[dict[str, list[Example]], list[dict[str, list[Example]]]]:
    """Distinct held-out eval inputs per operation, then for each round of the run the
    training inputs of each operation of its stage (never held out).

    Training inputs are drawn from D as it is, repeats included. Drawing them distinct
    instead skews addition's mix towards 3-digit sums (the 1- and 2-digit ones run out), and
    the student then failed to learn at all (4% after, in a run that also had 3 epochs and
    temperature 0.5; 79% with D as it is): the easy sums seen again and again are its curriculum.
    An operation with `inputs: mixed` draws each input from the D of a uniformly chosen
    training operation of its stage; one with `inputs: demonstrations` draws from its task's
    in-context examples; one with num_train 0 is only evaluated.
    """
    seed = cfg.data.seed
    suffix = (lambda name: "") if len(tasks) == 1 else (lambda name: f"-{name}")  # a one-task run keeps its streams
    eval_sets = {
        name: sample_where(task, cfg.data.num_eval, random.Random(f"{seed}-eval{suffix(name)}"), held_out=True, distinct=True,
                           what=f"data.num_eval ({name})")
        for name, task in tasks.items()
    }
    rounds: list[dict[str, list[Example]]] = []
    for stage in stages:
        for _ in range(stage.rounds):
            inputs = {}
            for op in stage.operations:
                rng = random.Random(f"{seed}-train-{len(rounds)}{suffix(op.name)}")
                what = f"num_train ({op.name})"
                if op.inputs == "synthetic" or op.num_train == 0:  # drawn when the round starts; or evaluated only
                    continue
                if op.inputs == "own":
                    inputs[op.name] = sample_where(tasks[op.name], op.num_train, rng, held_out=False, what=what)
                    continue
                if op.inputs == "demonstrations":
                    shown = tasks[op.name].demonstration_examples()
                    leaked = sorted({x.input for x in shown} & {x.input for x in eval_sets[op.name]})
                    if leaked:  # training on them would train on this run's evaluation
                        raise ConfigError(f"{what}: in-context examples (the task's demonstrations) are also evaluation inputs: {leaked[:3]}")
                    inputs[op.name] = [shown[rng.randrange(len(shown))] for _ in range(op.num_train)]
                    continue
                sources = [tasks[o.name] for o in stage.operations if o.num_train > 0]
                picks = [rng.randrange(len(sources)) for _ in range(op.num_train)]
                mixed = [x for j, src in enumerate(sources) for x in sample_where(src, picks.count(j), rng, held_out=False, what=what)]
                rng.shuffle(mixed)
                inputs[op.name] = mixed
            rounds.append(inputs)
    return eval_sets, rounds


def synthetic_inputs(
    cfg: Config, op: OperationConfig, engines: list[Any], tokenizer: Any, task: Task, round_index: int, clock: PhaseClock,
    stop: Callable[[], bool], replace: EngineReplacer,
) -> tuple[list[Example], dict[str, int]]:
    """Step 1 for `inputs: synthetic`: x sampled from the engines (which hold the teacher),
    few-shot prompted with inputs from D. Fails when too few come out usable."""
    sampling = {"temperature": op.synthetic_temperature, "max_tokens": op.synthetic_max_new_tokens}
    rng = random.Random(f"{cfg.data.seed}-synthetic-{round_index}-{op.name}")
    with clock("sample_inputs"):
        examples, counts = synthesize_inputs(
            engines, tokenizer, task, op.num_train, rng, op.synthetic_shots, sampling, op.synthetic_max_passes,
            cfg.teacher.chunk_size, cfg.run.timeout_s, f"round {round_index} {op.name} inputs", stop, replace,
        )
    print(f"[cdscale] round {round_index} {op.name}: {len(examples)} synthetic inputs; counts {counts}")
    if len(examples) < (1 - cfg.teacher.max_answer_skip_fraction) * op.num_train:
        raise RunFailed(
            f"round {round_index}, {op.name}: only {len(examples)} usable synthetic inputs of num_train={op.num_train} "
            f"after {op.synthetic_max_passes} passes ({counts}); the model does not continue the few-shot prompt "
            f"with new inputs (raise synthetic_max_passes or synthetic_temperature, or use inputs: own)"
        )
    return examples, counts


def teacher_targets(
    cfg: Config, engines: list[Any], tokenizer: Any, task: Task, examples: list[Example], round_index: int,
    clock: PhaseClock, stop: Callable[[], bool] | None = None, replace: EngineReplacer | None = None, ensemble: int = 1,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Steps 2 and 3: sample the teacher on T_teacher(x), keep its signal on f(y). With
    `ensemble` K > 1 the signal is the mean over K prompt variants (`ensemble_signal`)."""
    t = cfg.teacher
    prompts = [tokenizer(task.teacher_prompt(x))["input_ids"] for x in examples]
    # No per-request seeds: on vLLM's CPU backend a seeded request whose sampled token is
    # discarded (a prompt split across prefill chunks) fails with "CPU Generator does not
    # use offset". Sampling is reproducible from the engines' seeds for a fixed layout.
    # A prompt that leaves no room to generate in the engine's context is skipped and
    # counted (the round fails if too many are), not sent to fail inside vLLM.
    fits = [i for i, p in enumerate(prompts) if len(p) < t.max_model_len]
    sampling = [{"temperature": t.temperature, "max_tokens": t.max_new_tokens, "logprobs": t.top_k}] * len(fits)
    with clock("generate"):
        start = time.perf_counter()
        generated = generate_across(
            engines, [prompts[i] for i in fits], sampling, t.chunk_size, cfg.run.timeout_s, f"round {round_index} teacher",
            stop, replace,
        )
        throughput = {"generate_s": time.perf_counter() - start, "generated_tokens": sum(len(o["token_ids"]) for o in generated)}
    outputs: list[dict[str, Any] | None] = [None] * len(examples)
    for i, out in zip(fits, generated):
        outputs[i] = out
    if ensemble > 1:
        with clock("generate"):
            ensemble_signal(cfg, engines, tokenizer, task, examples, outputs, ensemble, f"round {round_index} ensemble", stop, replace)
    with clock("targets"):
        records, counts = _targets_from_outputs(cfg, tokenizer, task, examples, outputs, round_index)
    return records, {**counts, **throughput}


def ensemble_signal(
    cfg: Config, engines: list[Any], tokenizer: Any, task: Task, examples: list[Example], outputs: list[dict[str, Any] | None],
    k: int, desc: str, stop: Callable[[], bool] | None = None, replace: EngineReplacer | None = None,
) -> None:
    """Replace each output's logprobs with the ensemble teacher's (paper H5, App. B.5): the
    sampled y is scored under K prompt variants (`prompt_logprobs`, one prefill each) and
    every generated position gets the mean of the K distributions. An output cut off by
    max_new_tokens is scored when its task keeps it (`Task.answer_survives_cut`), and left to
    be skipped otherwise. One whose scoring prompts do not all fit the engine's context is
    dropped (counted as too long)."""
    t = cfg.teacher
    jobs, prompts = [], []  # (output index, variant)
    for i, (x, out) in enumerate(zip(examples, outputs)):
        if out is None or _lost_to_the_cut(task, tokenizer, out):
            continue
        variants = [tokenizer(task.teacher_prompt_variant(x, v))["input_ids"] + out["token_ids"] for v in range(k)]
        if max(map(len, variants)) >= t.max_model_len:
            outputs[i] = None  # no ensemble signal for it: skipped and counted as too long
            continue
        jobs += [(i, len(p) - len(out["token_ids"])) for p in variants]
        prompts += variants
    scoring = [{"temperature": 0.0, "max_tokens": 1, "prompt_logprobs": t.top_k}] * len(prompts)
    scored = generate_across(engines, prompts, scoring, t.chunk_size, cfg.run.timeout_s, desc, stop, replace)
    for start in range(0, len(jobs), k):
        i = jobs[start][0]
        rows = [FlatTopk(scored[start + v], prefix="prompt_") for v in range(k)]
        # Generated position j is predicted at prompt position len(variant prompt) + j.
        averaged = [average_topk([rows[v][jobs[start + v][1] + j] for v in range(k)]) for j in range(len(outputs[i]["token_ids"]))]
        outputs[i] = {**outputs[i], **flatten_topk(averaged)}


def _lost_to_the_cut(task: Task, tokenizer: Any, out: dict[str, Any]) -> bool:
    """Cut off by max_new_tokens, and not kept: skipped unless the task knows its answer is whole."""
    if out["finish_reason"] != "length":
        return False
    completion = tokenizer.decode(out["token_ids"], skip_special_tokens=True)
    span = task.answer_span(completion)
    return span is None or not task.answer_survives_cut(completion, span)


# What happened to a round's inputs, per operation: the same keys for teacher and gold targets.
TARGET_COUNTS = ("generated", "too_long", "no_answer", "truncated", "unaligned", "kept")


def _targets_from_outputs(
    cfg: Config, tokenizer: Any, task: Task, examples: list[Example], outputs: list[dict[str, Any] | None], round_index: int
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """`outputs[i]` is None where the prompt was too long to generate from."""
    t = cfg.teacher
    records = []
    counts = {**dict.fromkeys(TARGET_COUNTS, 0), "generated": sum(o is not None for o in outputs)}
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    for i, (x, out) in enumerate(zip(examples, outputs)):
        if out is None:
            counts["too_long"] += 1
            continue
        if _lost_to_the_cut(task, tokenizer, out):
            counts["truncated"] += 1
            continue
        completion = decode(out["token_ids"])
        span = task.answer_span(completion)
        if span is None:
            counts["no_answer"] += 1
            continue
        student_ids = tokenizer(task.student_prompt(x))["input_ids"]
        try:
            rec = build_student_record(student_ids, out["token_ids"], FlatTopk(out), span, decode, tokenizer.eos_token_id, t.top_k)
        except ValueError:
            counts["unaligned"] += 1  # the answer's characters do not map onto whole generated tokens
            continue
        answer = completion[span[0]:span[1]]
        records.append(
            {"index": i, "input": x.input, "gold": x.gold, "teacher_completion": completion, "answer": answer,
             # A synthetic input of a records task has no gold to score against.
             "teacher_correct": None if x.gold is None else task.score(x, answer),
             "input_ids": rec.input_ids, "answer_start": rec.answer_start,
             "topk_ids": rec.topk_ids, "topk_logprobs": rec.topk_logprobs}
        )
    counts["kept"] = len(records)
    skipped = len(outputs) - len(records)
    if skipped > t.max_answer_skip_fraction * len(outputs) or len(records) < cfg.student.batch_size:
        raise RunFailed(
            f"round {round_index}: {skipped} of {len(outputs)} inputs skipped ({counts}); above "
            f"teacher.max_answer_skip_fraction={t.max_answer_skip_fraction} or fewer left than one batch "
            f"(too_long: prompts of teacher.max_model_len={t.max_model_len} tokens or more)"
        )
    return records, counts


def gold_targets(
    cfg: Config, tokenizer: Any, task: Task, examples: list[Example], kind: str
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Supervised records for `targets: gold` (student prompt, gold answer),
    `gold_demonstration` (teacher prompt, the task's gold demonstration) or `text` (the
    student prompt itself as plain language-modelling data, e.g. replay), as one-hot rows."""
    records = []
    counts = dict.fromkeys(TARGET_COUNTS, 0)
    for i, x in enumerate(examples):
        if kind == "text":
            target = task.student_prompt(x)
            ids = tokenizer(target)["input_ids"]
            prompt_ids, target_ids = ids[:1], ids[1:]  # every token after the first
        else:
            prompt, target = (task.student_prompt(x), task.gold_completion(x)) if kind == "gold" else (task.teacher_prompt(x), task.teacher_demonstration(x))
            if target is None:
                counts["no_answer"] += 1  # no gold answer, or a task that writes no demonstration
                continue
            prompt_ids, target_ids = tokenizer(prompt)["input_ids"], tokenizer(target, add_special_tokens=False)["input_ids"]
        rec = gold_record(prompt_ids, target_ids, tokenizer.eos_token_id, cfg.teacher.top_k)
        if len(rec.input_ids) > cfg.teacher.max_model_len:
            counts["too_long"] += 1
            continue
        records.append({"index": i, "input": x.input, "gold": x.gold, "target": target, "input_ids": rec.input_ids,
                        "answer_start": rec.answer_start, "topk_ids": rec.topk_ids, "topk_logprobs": rec.topk_logprobs})
    counts["kept"] = len(records)
    if len(records) < cfg.student.batch_size:
        raise RunFailed(f"{kind} targets: only {len(records)} examples with a target ({counts}); fewer than student.batch_size")
    return records, counts


def learning_rate(cfg: Config, step: int, total: int) -> float:
    return cfg.student.lr * warmup_cosine(step, total, cfg.student.warmup_steps)


def train(
    cfg: Config, trainers: list[Any], records: list[dict[str, Any]], log: MetricsLog, round_index: int,
    losses: list[float], stop: Callable[[], bool],
) -> dict[str, float] | None:
    """Step 4: epochs of shuffled global batches, each split evenly across the ranks.

    The records go to every rank once; each call then runs `steps_per_call` steps. The plan
    of batches is a function of the seed, so a resumed round continues after the
    `len(losses)` steps already done and no batch is used twice. Returns None when `stop()`
    turned true between calls (the caller saves the state), else the round's statistics.
    """
    from tqdm import tqdm

    s = cfg.student
    rng = random.Random(f"{cfg.data.seed}-shuffle-{round_index}")
    steps_per_epoch = len(records) // s.batch_size
    total = steps_per_epoch * s.epochs
    plan = []  # (epoch, global batch indices) per step
    for epoch in range(s.epochs):
        order = list(range(len(records)))
        rng.shuffle(order)
        plan += [(epoch, order[b * s.batch_size : (b + 1) * s.batch_size]) for b in range(steps_per_epoch)]
    records_ref = ray.put(records)
    ray.get([t.set_records.remote(records_ref) for t in trainers], timeout=cfg.run.timeout_s)
    done_before, tokens, start = len(losses), 0, time.perf_counter()
    with tqdm(total=total, initial=done_before, desc=f"round {round_index} train", unit="step", leave=False) as bar:
        for first in range(done_before, total, s.steps_per_call):
            if stop():
                return None
            chunk = range(first, min(first + s.steps_per_call, total))
            lrs = [learning_rate(cfg, step, total) for step in chunk]
            calls = [
                t.train_steps.remote([plan[step][1][rank :: s.num_ranks] for step in chunk], lrs)
                for rank, t in enumerate(trainers)
            ]
            try:
                per_rank = ray.get(calls, timeout=cfg.run.timeout_s)
            except FloatingPointError as err:  # a rank's loss was NaN or inf; it stopped before its update
                raise FloatingPointError(
                    f"round {round_index}, steps {chunk.start}-{chunk.stop - 1}: {str(err).splitlines()[-1]}; nothing was "
                    f"saved after it, so the last commit under {cfg.run_dir / 'state'} is the last good state (lower student.lr?)"
                ) from None
            for k, step in enumerate(chunk):
                stats = [rank_stats[k] for rank_stats in per_rank]
                loss = sum(x["loss"] for x in stats) / len(stats)
                acc = sum(x["token_accuracy"] for x in stats) / len(stats)
                tokens += sum(x["tokens"] for x in stats)
                losses.append(loss)
                log.write(event="train", round=round_index, epoch=plan[step][0], step=step, loss=loss, lr=lrs[k], token_accuracy=acc)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            bar.update(len(chunk))
    seconds = time.perf_counter() - start
    head, tail = losses[: min(10, total)], losses[-min(10, total) :]
    return {
        "steps": total,
        "loss_first": sum(head) / len(head),
        "loss_last": sum(tail) / len(tail),
        "train_tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
        "train_seconds": seconds,
    }


def format_table(summary: dict[str, Any]) -> str:
    """The run's results as `cdscale report` tables them, then where the wall time went."""
    lines = ["accuracy in % on held-out inputs", results_table({Path(summary["run_dir"]).name: summary})]
    if "timings" in summary:
        split = summary["timings"]
        phases = ", ".join(f"{k} {v:.0f}s" for k, v in split.items() if k != "total")
        lines.append(f"\nwall time {split['total']:.0f}s: {phases}")
    return "\n".join(lines)


def _rounds(
    cfg: Config, stages: list[StageConfig], engines: list[Any], trainers: list[Any], tokenizer: Any, tasks: dict[str, Task],
    eval_sets: dict[str, list[Example]], train_rounds: list[dict[str, list[Example]]], model_path: str, log: MetricsLog,
    clock: PhaseClock, stop: StopRequest, replace: EngineReplacer,
) -> dict[str, Any]:
    """Evaluate before, then each round of each stage: targets of every operation of the
    stage (one mixture), train, sync, evaluate; save the student.

    Stages run one after the other on the same trainer ranks, so stage k+1 starts from the
    student of stage k. After each round (and when asked to stop mid-round) the trainers'
    state and the progress are committed under state/; a resumed run starts from the last
    commit. A stop is honoured during generation (its outputs are not kept) and between
    training calls (the state is saved); evaluation and the sync after training run to the
    round's commit.
    """
    t, run_dir = cfg.teacher, cfg.run_dir
    plan = [(k, stage, i == stage.rounds - 1) for k, stage in enumerate(stages) for i in range(stage.rounds)]  # (stage index, stage, its last round?)

    def run_eval(op: str, role: str, label: str, max_new_tokens: int) -> dict[str, float]:
        with clock("eval"):
            metrics, rows = evaluate(
                engines, tokenizer, tasks[op], eval_sets[op], role, max_new_tokens, t.chunk_size, cfg.run.timeout_s, replace
            )
            (run_dir / "eval" / op).mkdir(parents=True, exist_ok=True)
            write_text_atomic(run_dir / "eval" / op / f"{label}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        log.write(event="eval", operation=op, name=label, **metrics)
        print(f"[cdscale] {op} {label}: accuracy {100 * metrics['accuracy']:.1f}% on {metrics['n']} held-out inputs")
        return metrics

    transport, backend = weight_transport(cfg)

    def push(version: int, weights: ray.ObjectRef | None = None) -> tuple[dict[str, Any], ray.ObjectRef | None]:
        """Load the trainers' weights into the engines, or `weights` (an ObjectRef of PackedWeights)
        when given. Returns the sync's stats and the weights' ObjectRef, if they went through the object store."""
        with clock("sync"):
            if weights is None and transport == "broadcast":
                sync = broadcast.push_weights(trainers, engines, version, cfg.run.timeout_s, backend)
                # A replacement takes the trainers' weights as they are when it starts. They are
                # the engines' until training begins, and no engine is used between then and the next push.
                replace.holds(lambda engine: broadcast.push_weights(trainers, [engine], version, cfg.run.timeout_s, backend))
            else:
                sync, weights = push_weights(trainers if weights is None else None, engines, version, cfg.run.timeout_s, weights)
                replace.holds(lambda engine: push_weights(None, [engine], version, cfg.run.timeout_s, weights))
        return sync, weights

    def commit(progress: dict[str, Any], weights: ray.ObjectRef | None = None) -> None:
        """Commit the ranks' DeepSpeed state and the student as safetensors (`weights`: its
        export if the caller has one, else it is gathered here)."""
        def save(tmp: Path) -> None:
            ray.get([tr.save_state.remote(str(tmp)) for tr in trainers], timeout=cfg.run.timeout_s)
            student = weights if weights is not None else export_weights(trainers, cfg.run.timeout_s)
            save_hf_checkpoint(ray.get(student).named_tensors(), model_path, tmp / "student")

        with clock("checkpoint"):
            folder = commit_state(run_dir, progress, save)
        log.write(event="commit", state=folder.name, round=progress["round"], step=progress["step"])

    state = load_latest_state(run_dir)
    keep_initial = t.mode == "frozen" and len(plan) > 1
    initial_weights = None
    if state is None:
        progress: dict[str, Any] = {"round": 0, "step": 0, "losses": [], "summary": {}}
        summary = progress["summary"]
        summary.update({"run_dir": str(run_dir), "model": model_path, "stages": [s.name for s in stages],
                        "teacher": {}, "student_before": {}, "student_after": {}, "after_stage": {}})
        if cfg.eval.before:
            for op in tasks:
                summary["teacher"][op] = run_eval(op, "teacher", "teacher", t.max_new_tokens)
                summary["student_before"][op] = run_eval(op, "student", "student_before", cfg.eval.max_new_tokens_student)
    else:
        folder, progress = state
        summary = progress["summary"]
        print(f"[cdscale] resuming {run_dir} from {folder.name} (round {progress['round']}, step {progress['step']})")
        with clock("sync"):
            if keep_initial:  # the trainers still hold the initial weights: keep them for the frozen teacher
                initial_weights = export_weights(trainers, cfg.run.timeout_s)
        with clock("checkpoint"):
            ray.get([tr.load_state.remote(str(folder)) for tr in trainers], timeout=cfg.run.timeout_s)
        if t.mode == "recursive" and progress["round"] > 0:
            push(progress["round"])  # the engines teach with the last round's student
    for r in range(progress["round"], len(plan)):
        k, stage, last_of_stage = plan[r]
        seen = [op.name for earlier in stages[: k + 1] for op in earlier.operations]  # the student is evaluated on all
        log.write(event="round_start", round=r, stage=stage.name, stage_index=k)
        if r > 0 and t.mode == "frozen":
            # The engines hold the last student; the frozen teacher is the initial weights.
            push(0, initial_weights)
        shard = read_shard(run_dir, r)
        if shard is None:
            records, counts = [], {}
            by_operation, synthetic = {}, {}
            for op in (op for op in stage.operations if op.num_train > 0):
                inputs = train_rounds[r].get(op.name)
                if op.inputs == "synthetic":
                    inputs, synthetic[op.name] = synthetic_inputs(cfg, op, engines, tokenizer, tasks[op.name], r, clock, stop, replace)
                    log.write(event="synthetic_inputs", round=r, operation=op.name, **synthetic[op.name])
                if op.targets == "teacher":
                    op_records, by_operation[op.name] = teacher_targets(
                        cfg, engines, tokenizer, tasks[op.name], inputs, r, clock, stop, replace, op.ensemble
                    )
                else:
                    op_records, by_operation[op.name] = gold_targets(cfg, tokenizer, tasks[op.name], inputs, op.targets)
                records += [{**rec, "operation": op.name} for rec in op_records]
                for key, value in by_operation[op.name].items():
                    counts[key] = counts.get(key, 0) + value
            counts.update(by_operation=by_operation, synthetic_inputs=synthetic)
            with clock("checkpoint"):
                write_shard(run_dir, r, records, counts)
        else:
            records, counts = shard
            print(f"[cdscale] round {r}: reusing the {len(records)} committed distillation examples")
        tokens_per_s = counts["generated_tokens"] / counts["generate_s"] if counts.get("generate_s") else None
        log.write(event="targets", round=r, stage=stage.name, generate_tokens_per_s=tokens_per_s, **counts)
        print(
            f"[cdscale] {stage.name} round {r}: {counts['kept']} distillation examples; skipped: {counts['no_answer']} "
            f"without an answer, {counts['truncated']} truncated, {counts['unaligned']} unaligned, "
            f"{counts['too_long']} prompts too long"
        )
        if keep_initial and initial_weights is None:
            with clock("sync"):
                initial_weights = export_weights(trainers, cfg.run.timeout_s)
        with clock("train"):
            train_stats = train(cfg, trainers, records, log, r, progress["losses"], stop)
        if train_stats is None:
            progress["step"] = len(progress["losses"])
            commit(progress)
            raise Preempted(f"round {r}: stopped after step {progress['step']} ({stop.reason})")
        log.write(event="train_summary", round=r, **train_stats)
        sync, student_weights = push(r + 1)
        log.write(event="sync", round=r, **sync)
        summary[f"round_{r}"] = {"stage": stage.name, **counts, **train_stats, "sync_s": sync["seconds"]}
        for op in seen:
            summary["student_after"][op] = run_eval(op, "student", f"student_after_round_{r}", cfg.eval.max_new_tokens_student)
        if last_of_stage:
            summary["after_stage"][stage.name] = {op: summary["student_after"][op] for op in seen}
        if t.mode == "recursive":
            for op in stage.operations:
                summary.setdefault(f"teacher_round_{r + 1}", {})[op.name] = run_eval(op.name, "teacher", f"teacher_round_{r + 1}", t.max_new_tokens)
        progress.update(round=r + 1, step=0, losses=[])
        commit(progress, student_weights)
    with clock("checkpoint"):
        # The last commit (this run's, or the one a resumed run started from) holds the final student.
        copy_dir_atomic(load_latest_state(run_dir)[0] / "student", run_dir / "student")
    return summary


def run(cfg: Config, resume: bool = False) -> dict[str, Any]:
    """Run every round of `cfg` and return the summary (also written to summary.json).
    With `resume`, continue the run directory's last committed state; raises `Preempted`
    after saving when SIGTERM or `run.save_by_s` asks it to stop."""
    from transformers import AutoTokenizer

    clock, started = PhaseClock(), time.monotonic()
    run_dir = cfg.run_dir
    if not resume and (run_dir / "state").exists():
        raise FileExistsError(f"{run_dir} holds a run already; continue it with `cdscale run --resume {run_dir}`, or choose another run.name")
    stages = resolve_stages(cfg)
    tasks = build_tasks(stages)  # a bad records file fails here, before anything starts
    model_path = resolve_model_path(cfg.model.path)
    (run_dir / "data").mkdir(parents=True, exist_ok=True)
    (run_dir / "eval").mkdir(exist_ok=True)
    if not resume:
        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    log = MetricsLog(run_dir, append=resume)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    with clock("sample_inputs"):
        eval_sets, train_rounds = sample_splits(cfg, stages, tasks)

    t = cfg.teacher
    with clock("startup"):
        init_ray(cfg)
    stop = StopRequest(cfg.run.save_by_s, started)
    engine_kwargs = dict(
        model_path=model_path, dtype=cfg.model.dtype, max_model_len=t.max_model_len, kv_cache_gib=t.kv_cache_gib,
        max_logprobs=t.top_k + 1, enable_prefix_caching=t.enable_prefix_caching, max_num_seqs=t.max_num_seqs,
        seed=cfg.data.seed, tensor_parallel_size=t.tensor_parallel_size,
    )
    # The groups are collected one by one so that a failure while reserving the second one
    # (or starting any actor) still releases the first in the `finally` below.
    s, groups = cfg.student, []
    try:
        with clock("startup"):
            groups.append(reserve(t.num_engines, t.cpus_per_engine, t.gpus_per_engine, t.placement, cfg.run.timeout_s, "teacher engines"))
            groups.append(reserve(s.num_ranks, s.cpus_per_rank, s.gpus_per_rank, s.placement, cfg.run.timeout_s, "trainer ranks"))
            engine_group, trainer_group = groups
            placed = {"engines": bundle_nodes(engine_group), "trainers": bundle_nodes(trainer_group)}
            log.write(event="placement", **placed)
            replace = EngineReplacer(
                t.cpus_per_engine, t.gpus_per_engine, cfg.run.timeout_s, t.max_engine_restarts, engine_group, **engine_kwargs
            )
            engines = start_engines(t.num_engines, t.cpus_per_engine, t.gpus_per_engine, cfg.run.timeout_s, engine_group, **engine_kwargs)
            trainers = start_trainers(cfg, model_path, trainer_group)
        try:
            for restart in range(cfg.run.max_trainer_restarts + 1):
                try:
                    summary = _rounds(
                        cfg, stages, engines, trainers, tokenizer, tasks, eval_sets, train_rounds, model_path, log, clock, stop, replace
                    )
                    break
                except ray.exceptions.RayActorError as err:
                    # A rank process died (OOM killer, lost node). The ranks form one process
                    # group, so all are replaced, and the rounds go on from the last commit.
                    if restart == cfg.run.max_trainer_restarts or err.actor_id not in {tr._actor_id.hex() for tr in trainers}:
                        raise
                    log.write(event="restart", what="trainers", restart=restart + 1)
                    print(f"[cdscale] a trainer rank died; restarting the ranks from the last commit ({restart + 1} of {cfg.run.max_trainer_restarts})")
                    for trainer in trainers:
                        ray.kill(trainer)
                    with clock("startup"):
                        trainers = start_trainers(cfg, model_path, trainer_group)  # into the dead ranks' bundles
        finally:
            for actor in engines + trainers:
                ray.kill(actor)
    finally:
        release(*groups)
        stop.restore()
        log.close()
    summary["placement"] = placed  # Ray node ids, by engine and by rank
    summary["timings"] = clock.split()
    write_json_atomic(run_dir / "summary.json", summary)
    print(format_table(summary))
    return summary
