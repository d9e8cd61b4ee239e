"""A distillation run, as one recipe: the rounds of every stage on one controller, on Ray.

    1 inputs   x ~ D                                        inputs.py, teacher/synthetic_inputs.py
    2 teacher  y ~ P(. | T_teacher(x)), top-k logprobs      teacher/group.py (vLLM engine actors)
    3 targets  student ids = T_student(x) + f(y)'s tokens    build_targets.py, targets.py
    4 train    DeepSpeed ZeRO ranks, forward KL on top-k     student/loop.py, student/group.py
    5 sync     trainer weights -> running engines            sync/
    6 eval     teacher with context, student without        eval.py
    7 commit   data, trainer state, student (atomic)         checkpoint.py

`Distillation` owns the run's state: the `Progress` that every commit saves, the engine and
trainer groups, the weights the engines hold (`EngineGroup.weights`), the metrics log and
the clock. Stages run one after the other on the same ranks, so stage k+1 starts from the
student of stage k. A stop (SIGTERM, run.save_by_s) is honoured during generation (its
outputs are not kept) and between training calls (the state is committed); evaluation and
the sync after training run to the round's commit.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import ray
import yaml

from cdscale import preflight
from cdscale.build_targets import TargetBuilder, TargetCounts
from cdscale.checkpoint import (
    Progress,
    check_not_in_use,
    check_run_files,
    commit_state,
    copy_dir_atomic,
    hold_run_dir,
    load_latest_state,
    read_shard,
    save_hf_checkpoint,
    write_json_atomic,
    write_shard,
    write_text_atomic,
)
from cdscale.clock import PhaseClock
from cdscale.config import Config, OperationConfig, RunFailed, StageConfig, resolve_stages
from cdscale.eval import eval_prompts, evaluate, kl_per_token, sample_reference, score_responses
from cdscale.inputs import build_tasks, sample_splits, sample_validation
from cdscale.metrics import MetricsLog
from cdscale.models import resolve_model_path
from cdscale.placement import bundle_nodes, init_ray, release, reserve, stop_ray
from cdscale.preemption import Preempted, StopRequest
from cdscale.report import kl_table, results_table
from cdscale.student.group import TrainerGroup
from cdscale.student.loop import RoundPart, TrainStats, train_round
from cdscale.student.lora import write_adapter
from cdscale.sync import EngineWeights, make_weight_sync
from cdscale.sync.object_store import export_weights
from cdscale.tasks import Example
from cdscale.teacher.group import EngineGroup
from cdscale.teacher.synthetic_inputs import synthesize_inputs

log = logging.getLogger(__name__)


def run(cfg: Config, resume: bool = False) -> dict[str, Any]:
    """Run every round of `cfg` and return the summary (also written to summary.json).
    With `resume`, continue the run directory's last committed state; raises `Preempted`
    after committing when SIGTERM or `run.save_by_s` asks it to stop."""
    # Before the run directory is written: a refused run can start again as it is. A cluster
    # the caller started is the caller's to check.
    check_not_in_use(cfg.run_dir)
    preflight.check(cfg, resume, cluster=not ray.is_initialized())
    with hold_run_dir(cfg.run_dir):
        recipe = Distillation(cfg, resume)
        with recipe.cluster():
            for restart in range(cfg.run.max_trainer_restarts + 1):
                try:
                    recipe.resume()
                    recipe.rounds()
                    break
                except ray.exceptions.RayActorError as err:
                    # A rank process died (OOM killer, lost node). The ranks form one process
                    # group, so all are replaced, and the rounds go on from the last commit.
                    if restart == cfg.run.max_trainer_restarts or not recipe.trainers.owns(err):
                        raise
                    recipe.restart_trainers(restart + 1)
        return recipe.finish()


def engines_return_to_model(cfg: Config, rounds: int, on_policy: bool) -> bool:
    """Whether the engines, once they hold a student, must load the model's own weights again:
    a frozen teacher that generates after a student was on them, in a later round, at an
    on-policy refresh, or at the refresh after an evaluation inside a round (`eval.every_refreshes`,
    off-policy too). The driver then keeps those weights from the start."""
    return cfg.teacher.mode == "frozen" and (rounds > 1 or on_policy or cfg.eval.every_refreshes > 0)


class Distillation:
    def __init__(self, cfg: Config, resume: bool = False) -> None:
        """Everything that needs no cluster: the stages, tasks (a bad records file fails
        here), the run directory, the tokenizer and every round's inputs."""
        from transformers import AutoConfig, AutoTokenizer

        self.cfg, self.run_dir = cfg, cfg.run_dir
        self.clock, self.started = PhaseClock(), time.monotonic()
        # A new run never adopts an earlier run's files: its data was drawn with another config.
        earlier = [name for name in ("config.yaml", "state", "data", "metrics.jsonl") if (self.run_dir / name).exists()]
        if not resume and earlier:
            raise FileExistsError(
                f"{self.run_dir} holds a run already ({', '.join(earlier)}); continue it with "
                f"`cdscale run --resume {self.run_dir}`, or choose another run.name"
            )
        self.stages = resolve_stages(cfg)
        self.tasks = build_tasks(self.stages)
        # (stage index, stage, last round of its stage?) for every round of the run
        self.plan = [
            (k, stage, i == stage.rounds - 1) for k, stage in enumerate(self.stages) for i in range(stage.rounds)
        ]
        self.model_path = resolve_model_path(cfg.model.path)
        (self.run_dir / "data").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "eval").mkdir(exist_ok=True)
        if not resume:
            write_text_atomic(self.run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        # The state `resume()` loads, read (and its files checked) once; a new run has none.
        self.committed = load_latest_state(self.run_dir) if resume else None
        if resume:
            check_run_files(self.run_dir, self.committed and self.committed[0])  # before any work
        self.log = MetricsLog(self.run_dir, append=resume, state=self.committed and self.committed[0].name)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        for task in self.tasks.values():  # a chat task renders with the model's template
            task.use_tokenizer(self.tokenizer, cfg.teacher.max_model_len)
        self.student_max_len = getattr(AutoConfig.from_pretrained(self.model_path), "max_position_embeddings", None)
        with self.clock("sample_inputs"):
            self.eval_sets, self.train_inputs = sample_splits(cfg, self.stages, self.tasks)
            until = cfg.student.until_accuracy
            self.validation_sets = sample_validation(cfg, self.tasks, self.eval_sets) if until else {}
        self.progress = Progress()
        self.initial: EngineWeights | None = None  # the model's own weights, kept when engines must return to them
        self.pushed: EngineWeights | None = None  # what the last push gave the engines
        self.on_policy = any(op.source != "teacher" for stage in self.stages for op in stage.operations if op.num_train)

    @contextmanager
    def cluster(self) -> Iterator[None]:
        """Ray, the placement groups and both actor groups for the body; all released after it."""
        cfg = self.cfg
        # Ctrl-C during ray.init is kept and honoured at the first wait after it.
        self.stop = StopRequest(cfg.run.save_by_s, self.started)
        groups, self.engines, self.trainers = [], None, None
        session, ours, failed = None, not ray.is_initialized(), True
        try:
            with self.clock("startup"):
                try:
                    session = init_ray(cfg, self.stop)
                except SystemExit as exiting:  # from ray.init's own SIGTERM handler, in place while it runs
                    if exiting.code != signal.SIGTERM:
                        raise
                    raise Preempted("stopped while Ray started", "SIGTERM") from None
                self.stop.install()
                self._start_actors(groups, session)
            self.log.write(
                event="student",
                parameters=self.trainers.parameters["total"],
                trainable=self.trainers.parameters["trainable"],
            )
            self.sync = make_weight_sync(cfg)
            self.engines.restore = self._restore_engine
            yield
            failed = False
        except Preempted:  # a stop at a safe point, committed: not a failure
            failed = False
            raise
        finally:
            try:
                for group in (self.engines, self.trainers):
                    if group is not None:
                        group.kill()
                release(*groups)
                self.stop.restore()
                self.log.close()
            finally:
                if session is not None:
                    stop_ray(session, keep_logs=failed)
                elif ours and ray.is_initialized() and not cfg.run.ray_address:
                    ray.shutdown()  # a local cluster whose start-up was cut short

    def _start_actors(self, groups: list[Any], session: Path | None) -> None:
        """Both placement groups (appended to `groups` as they are reserved, so that the
        caller releases what was reserved), then the engines and the trainer ranks."""
        cfg, t, s = self.cfg, self.cfg.teacher, self.cfg.student
        for count, cpus, gpus, strategy, what in (
            (t.num_engines, t.cpus_per_engine, t.gpus_per_engine, t.placement, "teacher engines"),
            (s.num_ranks, s.cpus_per_rank, s.gpus_per_rank, s.placement, "trainer ranks"),
        ):
            groups.append(reserve(count, cpus, gpus, strategy, cfg.run.timeout_s, what, self.stop))
        self.placement = {"engines": bundle_nodes(groups[0]), "trainers": bundle_nodes(groups[1])}
        # The local cluster's session folder holds its processes' logs while the run lasts.
        self.log.write(event="placement", **self.placement, ray_session=session and str(session))
        # The engines load their model while the ranks start and join their process group.
        self.engines = EngineGroup.from_config(cfg, self.model_path, groups[0]).launch(t.num_engines)
        self.trainers = TrainerGroup.from_config(cfg, self.model_path, groups[1])
        self.trainers.start(self.stop)
        self.engines.wait_ready(self.stop)

    def _restore_engine(self, new: list[Any], held: EngineWeights) -> None:
        # The trainers as they are now: after a restart, the new ranks.
        self.sync.restore(self.trainers.actors, new, held)

    def restart_trainers(self, attempt: int) -> None:
        self.committed = load_latest_state(self.run_dir)
        # The dead attempt's events after the last commit describe undone training.
        self.log.rollback(self.committed and self.committed[0].name)
        self.log.write(event="restart", what="trainers", restart=attempt)
        log.info(
            "a trainer rank died; restarting the ranks from the last commit (%d of %d)",
            attempt,
            self.cfg.run.max_trainer_restarts,
        )
        with self.clock("startup"):
            self.trainers.restart(self.stop)

    def resume(self) -> None:
        """Load the last commit into the (fresh) trainer ranks, or begin: evaluate before.
        Either way the engines then hold what round `progress.round` generates with."""
        state = self.committed
        frozen = self.cfg.teacher.mode == "frozen"
        if self.engines.weights.version != 0 or engines_return_to_model(self.cfg, len(self.plan), self.on_policy):
            # The ranks hold the model's own weights until a state is loaded: keep them for
            # the frozen teacher, and for engines that hold a student no commit knows of.
            with self.clock("sync"):
                self.initial = self.initial or self.sync.initial(self.trainers.actors)
        if state is None:
            self.progress = Progress(
                summary={
                    "run_dir": str(self.run_dir),
                    "model": self.model_path,
                    "stages": [s.name for s in self.stages],
                    "teacher": {},
                    "student_before": {},
                    "student_after": {},
                    "after_stage": {},
                }
            )
        else:
            folder, saved = state
            self.progress = Progress.from_dict(saved)
            log.info(
                "resuming %s from %s (round %d, step %d)",
                self.run_dir,
                folder.name,
                self.progress.round,
                self.progress.step,
            )
            with self.clock("checkpoint"):
                self.trainers.call("load_state", str(folder))
        if frozen:
            self._engines_hold(0)
        else:
            self._engines_hold(*self.student_now())
        if state is None and self.cfg.eval.before:
            self.progress.summary["teacher"] = self.evaluate(list(self.tasks), "teacher", "teacher")
            self.progress.summary["student_before"] = self.evaluate(list(self.tasks), "student", "student_before")
        if state is None:  # the yardstick of evaluation without gold, which only the model before can set
            self.sample_references()
            self.measure_gaps(list(self.tasks), "student_before")

    def student_now(self) -> tuple[int, int]:
        """The trainers' weights now as an engine (version, step), see `EngineWeights`."""
        r, step = self.progress.round, self.progress.step
        return (r + 1, step) if step else (r, 0)

    def _engines_hold(self, version: int, step: int = 0) -> None:
        """Make the engines hold weights `version`: 0 the model's own, n the trainers' after round
        n - 1 (with `step`: the trainers' at that step of round n - 1). Weights the last push left in
        the object store are loaded again rather than exported again."""
        held, pushed = self.engines.weights, self.pushed
        if (held.version, held.step) == (version, step):
            return
        if version == 0:
            weights = self.initial
        elif pushed is not None and pushed.packed is not None and (pushed.version, pushed.step) == (version, step):
            weights = pushed
        else:
            self.push(version, step)
            return
        with self.clock("sync"):
            stats = self.sync.load(self.engines.engines, weights)
        self.engines.weights = weights
        self.log.write(event="reload", round=self.progress.round, step=self.progress.step, **stats.as_event())

    def hold(self, role: str) -> bool:
        """Make the engines answer as `role` at this point of the round: "student" the trainers'
        weights now, "teacher" the frozen model's own weights, or in recursive mode the
        student's (the student teaches itself, refreshed with it). True when the teacher's
        requests must ask for the base weights beside a student's adapter (no reload)."""
        if role == "teacher" and self.cfg.teacher.mode == "frozen":
            if self.sync.transport == "adapter":
                return True
            self._engines_hold(0)
        else:
            self._engines_hold(*self.student_now())
        return False

    def rounds(self) -> None:
        for r in range(self.progress.round, len(self.plan)):
            k, stage, last_of_stage = self.plan[r]
            self.log.write(event="round_start", round=r, stage=stage.name, stage_index=k)
            self._engines_hold(0 if self.cfg.teacher.mode == "frozen" else r)
            stats, counts = self.train(r, stage)
            if stats is None:
                self.commit()
                raise Preempted(
                    f"round {r}: stopped after step {self.progress.step} ({self.stop.reason})", self.stop.reason
                )
            self.log.write(event="train_summary", round=r, **stats.__dict__)
            sync = self.push(r + 1)
            self.progress.summary[f"round_{r}"] = {
                "stage": stage.name,
                **counts,
                **stats.__dict__,
                "sync_s": sync["seconds"],
            }
            self.evaluate_round(r, k, stage, last_of_stage)
            self.progress.round, self.progress.step, self.progress.losses = r + 1, 0, []
            self.commit()
        with self.clock("checkpoint"):
            # The last commit (this run's, or the one a resumed run started from) holds the final student.
            copy_dir_atomic(load_latest_state(self.run_dir)[0] / "student", self.run_dir / "student")

    def train(self, r: int, stage: StageConfig) -> tuple[TrainStats | None, dict[str, Any]]:
        """Round r's targets and training: at once, or (`data.refresh_every_steps`) refresh by
        refresh, each generating with the weights the previous one left. The round's stats
        (None when a stop came) and its target counts."""
        cfg, training = self.cfg, [op for op in stage.operations if op.num_train > 0]
        scored = [op.name for op in stage.operations if op.num_eval > 0]  # the curve's operations
        every = cfg.data.refresh_every_steps
        if not every:
            records, counts = self.build_targets(r, stage)
            return self.train_to_criterion(r, records, [op.name for op in training]), counts
        # The round's steps as its inputs make them (skips aside), cut into refreshes of `every`.
        inputs = {op.name: self.train_inputs[r][op.name] for op in training}
        total = max(1, sum(map(len, inputs.values())) // cfg.student.batch_size) * cfg.student.epochs
        refreshes = math.ceil(total / every)
        runs, counts = [], {}
        for j in range(refreshes):
            steps = range(j * every, min((j + 1) * every, total))
            if self.progress.step >= steps.stop:  # trained before this run resumed
                counts[j] = (read_shard(self.run_dir, r, j) or ([], {}))[1]
                continue
            if j and cfg.eval.every_refreshes and j % cfg.eval.every_refreshes == 0 and scored:
                self.evaluate_mid_round(r, scored)
            share = {name: xs[j * len(xs) // refreshes : (j + 1) * len(xs) // refreshes] for name, xs in inputs.items()}
            records, counts[j] = self.build_targets(r, stage, share, refresh=j)
            part = RoundPart(steps, total, refresh=j)
            with self.clock("train"):
                runs.append(train_round(cfg, self.trainers, records, self.progress, self.log, self.stop, part))
            if runs[-1] is None:
                return None, counts
        return TrainStats.added(runs, total), {"refreshes": refreshes, **_added(list(counts.values()))}

    def train_to_criterion(self, r: int, records: list[dict[str, Any]], ops: list[str]) -> TrainStats | None:
        """Round r's `student.epochs` on `records`; with `student.until_accuracy`, then an epoch
        more at a time while an operation's validation accuracy is below it, at most
        `student.max_extra_epochs`. None when a stop came."""
        s = self.cfg.student
        per_epoch = len(records) // s.batch_size
        extra = s.max_extra_epochs if s.until_accuracy else 0
        runs = []
        for epochs in range(s.epochs, s.epochs + extra + 1):
            end = per_epoch * epochs
            if self.progress.step > end:  # checked, and below the criterion, before this run resumed
                continue
            part = RoundPart(range(0, end), per_epoch * s.epochs, extra)
            with self.clock("train"):
                runs.append(train_round(self.cfg, self.trainers, records, self.progress, self.log, self.stop, part))
            if runs[-1] is None:
                return None
            if not extra or self.validate(r, epochs, ops) >= s.until_accuracy:
                break
        return TrainStats.added(runs, self.progress.step)

    def validate(self, r: int, epochs: int, ops: list[str]) -> float:
        """The lowest of `ops`' validation accuracies after `epochs` epochs of round r, kept in
        the summary's `validation` (the criterion of `student.until_accuracy`)."""
        self.hold("student")
        step = self.progress.step
        results = self.evaluate(ops, "student", f"validation_round_{r}_step_{step}", self.validation_sets)
        for op, metrics in results.items():
            point = {"round": r, "step": step, "epochs": epochs, "accuracy": metrics["accuracy"]}
            points = self.progress.summary.setdefault("validation", {}).setdefault(op, [])
            points[:] = [p for p in points if (p["round"], p["step"]) != (r, step)] + [point]  # once after a resume
        lowest = min(metrics["accuracy"] for metrics in results.values())
        self.log.write(event="validation", round=r, step=step, epochs=epochs, accuracy=lowest)
        met = lowest >= self.cfg.student.until_accuracy
        log.info(
            "round %d after %d epochs: validation accuracy %.3f, %s student.until_accuracy=%g",
            *(r, epochs, lowest, "reaching" if met else "below", self.cfg.student.until_accuracy),
        )
        return lowest

    def build_targets(
        self, r: int, stage: StageConfig, inputs: dict[str, list[Example]] | None = None, refresh: int | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The records of every operation of round r's stage (one mixture) on `inputs` (a
        refresh's share; None: the round's), committed
        as the round's (or refresh's) data shard before training; a resumed round reuses it.
        Each operation's responses come from its `source`: the teacher, the student, or both."""
        shard = read_shard(self.run_dir, r, refresh)
        if shard is not None:
            log.info("round %d: reusing the %d committed distillation examples", r, len(shard[0]))
            return shard
        builder = TargetBuilder(self.cfg, self.tokenizer, self.engines, self.clock, self.stop, self.student_max_len)
        training = [op for op in stage.operations if op.num_train > 0]
        given = self.train_inputs[r] if inputs is None else inputs  # None: the whole round's
        inputs = {op.name: given.get(op.name) for op in training}
        # Whole operations of synthetic inputs, and synthetic inputs that top up an operation's own.
        wanted = [op for op in training if op.inputs == "synthetic"]
        wanted += [dataclasses.replace(op, num_train=op.synthetic_top_up) for op in training if op.synthetic_top_up]
        synthetic = self.synthetic_inputs(r, wanted)
        for name, (made, _) in synthetic.items():
            inputs[name] = [*(inputs[name] or []), *made]
        sampled = [op for op in training if op.targets == "teacher"]
        built, generate_s = self._sampled_targets(builder, r, sampled, inputs, refresh)
        for op in training:
            if op.targets != "teacher":
                built[op.name] = builder.gold(self.tasks[op.name], inputs[op.name], op.targets)
        records = [{**rec, "operation": op.name} for op in training for rec in built[op.name][0]]
        by_operation = {op.name: built[op.name][1].as_dict() for op in training}
        total = sum((built[op.name][1] for op in training), TargetCounts())
        counts = {
            **total.as_dict(),
            "generate_s": generate_s,
            "by_operation": by_operation,
            "synthetic_inputs": {name: counts for name, (_, counts) in synthetic.items()},
        }
        with self.clock("checkpoint"):
            write_shard(self.run_dir, r, records, counts, refresh)
        tokens_per_s = total.generated_tokens / generate_s if generate_s else None
        where = {} if refresh is None else {"refresh": refresh}
        self.log.write(
            event="targets", round=r, **where, stage=stage.name, generate_tokens_per_s=tokens_per_s, **counts
        )
        log.info(
            "%s round %d%s: %d distillation examples; "
            "skipped: %d without an answer, %d truncated, %d unaligned, %d too long, "
            "%d without the teacher's reasoning",
            stage.name,
            r,
            "" if refresh is None else f" refresh {refresh}",
            total.kept,
            total.no_answer,
            total.truncated,
            total.unaligned,
            total.too_long,
            total.no_reasoning,
        )
        return records, counts

    def _sampled_targets(
        self,
        builder: TargetBuilder,
        r: int,
        sampled: list[OperationConfig],
        inputs: dict[str, list[Example]],
        refresh: int | None,
    ) -> tuple[dict[str, tuple[list[dict[str, Any]], TargetCounts]], float]:
        """The records and counts of each operation whose responses are sampled, and the
        seconds generation took: the student answers its part of the inputs (which inputs, by
        `_student_answers`), then the teacher the rest."""
        to_student = {op.name: self._student_answers(op, inputs[op.name], r, refresh) for op in sampled}
        parts = {
            who: [
                [x for x, s in zip(inputs[op.name], to_student[op.name]) if s == (who == "student")] for op in sampled
            ]
            for who in ("teacher", "student")
        }
        # The student's part first: at a refresh the engines may hold the student already (a
        # mid-round evaluation), and its teacher's reading leaves them on the teacher for the rest.
        student_results, student_s = ([], 0.0)
        if any(parts["student"]):
            student_results, student_s = builder.student(
                [(self.tasks[op.name], xs) for op, xs in zip(sampled, parts["student"])], r, self.hold, check=False
            )
        teacher_results, generate_s = builder.teacher(
            [(self.tasks[op.name], xs, op.ensemble) for op, xs in zip(sampled, parts["teacher"])],
            r,
            self.hold,
            check=False,
        )
        built = {}
        for i, op in enumerate(sampled):
            made = [teacher_results[i]] + ([student_results[i]] if student_results else [])
            # Each record's index is its input's place among the operation's inputs.
            places = {who: [k for k, s in enumerate(to_student[op.name]) if s == (who == "student")] for who in parts}
            records = [{**rec, "index": places[rec["source"]][rec["index"]]} for recs, _ in made for rec in recs]
            counts = sum((c for _, c in made), TargetCounts())
            builder.check_kept(counts, len(inputs[op.name]), r)
            built[op.name] = (records, counts)
        return built, generate_s + student_s

    def _student_answers(self, op: OperationConfig, xs: list[Example], r: int, refresh: int | None) -> list[bool]:
        """For each input of `op`, whether the student answers it (its `source`; mixed: a seeded draw)."""
        if op.source != "mixed":
            return [op.source == "student"] * len(xs)
        rng = random.Random(f"{self.cfg.data.seed}-source-{r}-{refresh}-{op.name}")
        return [rng.random() < op.student_fraction for _ in xs]

    def synthetic_inputs(self, r: int, ops: list[OperationConfig]) -> dict[str, tuple[list[Example], dict[str, int]]]:
        """x sampled from the engines (which hold the teacher), few-shot prompted with inputs
        from D, for every operation of `ops` at once. Fails when too few come out usable."""
        if not ops:
            return {}
        jobs = [(self.tasks[op.name], op, random.Random(f"{self.cfg.data.seed}-synthetic-{r}-{op.name}")) for op in ops]
        with self.clock("sample_inputs"):
            made = synthesize_inputs(self.engines, self.tokenizer, jobs, f"round {r} synthetic inputs", self.stop)
        for op, (inputs, counts) in zip(ops, made):
            log.info("round %d %s: %d synthetic inputs; counts %s", r, op.name, len(inputs), counts)
            self.log.write(event="synthetic_inputs", round=r, operation=op.name, **counts)
            if len(inputs) < (1 - self.cfg.teacher.max_answer_skip_fraction) * op.num_train:
                raise RunFailed(
                    f"round {r}, {op.name}: only {len(inputs)} usable synthetic inputs of num_train={op.num_train} "
                    f"after {op.synthetic_max_passes} passes ({counts}); the model does not continue the few-shot "
                    "prompt with new inputs (raise synthetic_max_passes or synthetic_temperature, or use inputs: own "
                    "with no synthetic_top_up)"
                )
        return {op.name: result for op, result in zip(ops, made)}

    def push(self, version: int, step: int = 0) -> dict[str, Any]:
        """The trainers' weights into the engines as `version` (and `step`: mid-round, see
        `EngineWeights`); returns the sync's event."""
        with self.clock("sync"):
            stats, held = self.sync.push(self.trainers.actors, self.engines.engines, version)
        self.engines.weights = self.pushed = dataclasses.replace(held, step=step)
        event = stats.as_event()
        # After round version - 1, or at `step` of it.
        self.log.write(event="sync", round=version - 1, **({"step": step} if step else {}), **event)
        return event

    def evaluate(
        self, ops: list[str], role: str, label: str, inputs: dict[str, list[Example]] | None = None
    ) -> dict[str, dict[str, float]]:
        """Greedy accuracy of the teacher (with its context) or the student (without) on each
        of `ops`' held-out inputs (or on `inputs`, e.g. the validation inputs), in one engine call.
        An operation without inputs (num_eval 0) is left out."""
        t = self.cfg.teacher
        max_new_tokens = t.max_new_tokens if role == "teacher" else self.cfg.eval.max_new_tokens_student
        inputs = self.eval_sets if inputs is None else inputs
        sets = {op: (self.tasks[op], inputs[op]) for op in ops if inputs[op]}
        results = {}
        with self.clock("eval"):
            for op, (metrics, rows) in evaluate(self.engines, self.tokenizer, sets, role, max_new_tokens).items():
                (self.run_dir / "eval" / op).mkdir(parents=True, exist_ok=True)
                write_text_atomic(
                    self.run_dir / "eval" / op / f"{label}.jsonl", "".join(json.dumps(r) + "\n" for r in rows)
                )
                results[op] = metrics
        for op, metrics in results.items():
            self.log.write(event="eval", operation=op, name=label, **metrics)
            log.info("%s %s on %d held-out inputs: %s", op, label, metrics["n"], _headline(metrics))
        return results

    def _gap_prompts(self, op: str) -> dict[str, tuple[list[list[int]], list[list[int]]]]:
        """For each KL an open-ended operation measures, (the reference's prompts, the student's):
        "context_gap" the teacher's held-out prompts with the context and the same without it,
        "drift" the drift prompts without any context on both sides."""
        task, held_out = self.tasks[op], self.eval_sets[op]
        student = eval_prompts(self.tokenizer, task, held_out, "student")
        drift = eval_prompts(self.tokenizer, task, task.drift_examples[: len(held_out)], "student")  # none unscored
        return {
            "context_gap": (eval_prompts(self.tokenizer, task, held_out, "teacher"), student),
            "drift": (drift, drift),
        }

    def sample_references(self) -> None:
        """Before distillation, while the engines hold the model's own weights: the held-out
        responses that every later context gap and drift is measured on (kept in the Progress)."""
        jobs = [
            (op, kind, prompts[0])
            for op in self.tasks
            if self.tasks[op].open_ended
            for kind, prompts in self._gap_prompts(op).items()
            if prompts[0]  # no drift prompts, no drift
        ]
        if not jobs:
            return
        with self.clock("eval"):
            sampled = sample_reference(
                self.engines, [p for _, _, ps in jobs for p in ps], self.cfg.teacher.max_new_tokens, "eval references"
            )
        start = 0
        for op, kind, prompts in jobs:
            self.progress.references.setdefault(op, {})[kind] = sampled[start : start + len(prompts)]
            start += len(prompts)

    def measure_gaps(self, ops: list[str], label: str) -> None:
        """KL(reference || student) per token on each of `ops`' reference responses, into the
        summary's "context_gap" (and "drift") with the fraction of the gap closed since before."""
        jobs = [(op, kind) for op in ops for kind in self.progress.references.get(op, {})]
        if not jobs:
            return
        gap_prompts = {op: self._gap_prompts(op) for op, _ in jobs}  # tokenized once per operation
        prompts, responses = [], []
        for op, kind in jobs:
            prompts += gap_prompts[op][kind][1]
            responses += [ref and ref["token_ids"] for ref in self.progress.references[op][kind]]
        with self.clock("eval"):
            scored = score_responses(self.engines, prompts, responses, f"eval {label} KL")
        start = 0
        for op, kind in jobs:
            references = self.progress.references[op][kind]
            kl = kl_per_token([ref and ref["logprobs"] for ref in references], scored[start : start + len(references)])
            start += len(references)
            entry = self.progress.summary.setdefault(kind, {}).setdefault(op, {})
            entry["before" if label == "student_before" else "after"] = kl
            if kind == "context_gap" and entry.get("before") and entry.get("after") is not None:
                entry["closed"] = 1 - entry["after"] / entry["before"]
            self.log.write(event=kind, operation=op, name=label, kl=kl)
            log.info("%s %s: %s KL %s per token", op, label, kind.replace("_", " "), "-" if kl is None else f"{kl:.4f}")

    def evaluate_mid_round(self, r: int, ops: list[str]) -> None:
        """The student at this step of round r (`eval.every_refreshes`), a point of the summary's
        curve with the seconds of the run so far, evaluation excluded (of this process: a
        resumed run counts from its resume)."""
        self.hold("student")  # what the refresh's own sampling starts from, so on-policy no extra sync
        step = self.progress.step
        results = self.evaluate(ops, "student", f"student_round_{r}_step_{step}")
        split = self.clock.split()
        for op, metrics in results.items():
            point = {"round": r, "step": step, "seconds": split["total"] - split["eval"], **metrics}
            curve = self.progress.summary.setdefault("curve", {}).setdefault(op, [])
            curve[:] = [p for p in curve if (p["round"], p["step"]) != (r, step)] + [point]  # once after a resume

    def evaluate_round(self, r: int, k: int, stage: StageConfig, last_of_stage: bool) -> None:
        """The student on every scored operation seen so far; a recursive teacher on the stage's."""
        summary = self.progress.summary
        seen = [op.name for earlier in self.stages[: k + 1] for op in earlier.operations if op.num_eval]
        summary["student_after"].update(self.evaluate(seen, "student", f"student_after_round_{r}"))
        self.measure_gaps(seen, f"student_after_round_{r}")
        if last_of_stage:
            summary["after_stage"][stage.name] = {op: summary["student_after"][op] for op in seen}
        if self.cfg.teacher.mode == "recursive":
            teacher = self.evaluate([op.name for op in stage.operations], "teacher", f"teacher_round_{r + 1}")
            summary.setdefault(f"teacher_round_{r + 1}", {}).update(teacher)

    def commit(self) -> None:
        """Commit the ranks' DeepSpeed state, the progress and the student as safetensors (the
        weights the engines took at the last sync when they went through the object store); a
        LoRA student also as its adapter, in `student/adapter/`."""

        def save(tmp: Path) -> None:
            self.trainers.call("save_state", str(tmp))
            held, timeout_s = self.engines.weights, self.cfg.run.timeout_s
            # What the engines took at the last sync, when that is what the trainers hold now.
            now = self.student_now()
            synced = held.packed is not None and (held.version, held.step) == now
            student = held.packed if synced and not held.adapter else export_weights(self.trainers.actors, timeout_s)
            save_hf_checkpoint(ray.get(student).named_tensors(), self.model_path, tmp / "student")
            if self.cfg.student.lora.r > 0:
                adapter = held.packed if synced and held.adapter else None
                adapter = adapter or export_weights(self.trainers.actors, timeout_s, "export_adapter")
                write_adapter(tmp / "student" / "adapter", *ray.get(adapter))

        def record(name: str) -> None:
            # Before the state's rename: a resume rolls metrics.jsonl back to its state's event.
            self.log.write(event="commit", state=name, round=self.progress.round, step=self.progress.step)

        with self.clock("checkpoint"):
            commit_state(self.run_dir, self.progress.as_dict(), save, before_rename=record)

    def finish(self) -> dict[str, Any]:
        summary = self.progress.summary
        summary["placement"] = self.placement  # Ray node ids, by engine and by rank
        summary["timings"] = self.clock.split()
        write_json_atomic(self.run_dir / "summary.json", summary)
        print(format_table(summary))
        return summary


def _added(counts: list[dict[str, Any]]) -> dict[str, Any]:
    """The target counts of a round's refreshes as one: numbers summed, each refresh's
    per-operation counts summed per operation."""
    total: dict[str, Any] = {}
    for part in counts:
        for key, value in part.items():
            if isinstance(value, dict):
                total[key] = _added([total.get(key, {}), value]) if value else total.get(key, {})
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
    return total


def _headline(metrics: dict[str, Any]) -> str:
    said = [] if metrics["accuracy"] is None else [f"accuracy {100 * metrics['accuracy']:.1f}%"]
    said += [f"{name} {100 * rate:.1f}%" for name, rate in metrics.get("rules", {}).items()]
    return ", ".join(said) or "no gold answers and no rules"


def format_table(summary: dict[str, Any]) -> str:
    """The run's results as `cdscale report` tables them, then where the wall time went."""
    run = Path(summary["run_dir"]).name
    lines = ["accuracy in % on held-out inputs", results_table({run: summary})]
    if summary.get("context_gap") or summary.get("drift"):
        lines += ["\nKL per token on held-out responses (evaluation without gold)", kl_table({run: summary})]
    for op, points in summary.get("curve", {}).items():
        shown = "; ".join(f"round {p['round']} step {p['step']} ({p['seconds']:.0f}s): {_headline(p)}" for p in points)
        lines.append(f"\n{op} during training (eval.every_refreshes): {shown}")
    for op, points in summary.get("validation", {}).items():
        shown = "; ".join(f"round {p['round']} after {p['epochs']} epochs: {100 * p['accuracy']:.1f}%" for p in points)
        lines.append(f"\n{op} on its validation inputs (student.until_accuracy): {shown}")
    if "timings" in summary:
        split = summary["timings"]
        phases = ", ".join(f"{k} {v:.0f}s" for k, v in split.items() if k != "total")
        lines.append(f"\nwall time {split['total']:.0f}s: {phases}")
    return "\n".join(lines)
