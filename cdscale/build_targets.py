"""Steps 2 and 3 of a round: an operation's training records, from the teacher or from gold.

`TargetBuilder.teacher` samples the teacher engines on T_teacher(x) and keeps their signal at
the answer f(y) (an ensemble teacher averages it over prompt variants); `TargetBuilder.gold`
writes supervised records. The alignment of one record is `targets.py`; what happened to
every input is counted in `TargetCounts`, with the same fields for both kinds.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Callable

from cdscale.config import RunFailed
from cdscale.targets import (
    FlatTopk,
    answer_token_range,
    average_topk,
    build_student_record,
    flatten_topk,
    gold_record,
    stop_token_ids,
)
from cdscale.tasks import Example, Task

if TYPE_CHECKING:
    from cdscale.clock import PhaseClock
    from cdscale.config import Config
    from cdscale.teacher.group import EngineGroup


@dataclass
class TargetCounts:
    """What happened to a round's inputs: each was generated from (or not: too_long), then
    kept or skipped for one reason. Counts of several operations add up."""

    generated: int = 0
    too_long: int = 0
    no_answer: int = 0
    truncated: int = 0
    unaligned: int = 0
    no_reasoning: int = 0  # on-policy: the teacher's own reasoning, to read the student's answer after, had no answer
    kept: int = 0
    generated_tokens: int = 0

    def __add__(self, other: TargetCounts) -> TargetCounts:
        return TargetCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class TargetBuilder:
    def __init__(
        self,
        cfg: Config,
        tokenizer: Any,
        engines: EngineGroup | None = None,
        clock: PhaseClock | None = None,
        stop: Callable[[], bool] | None = None,
        student_max_len: int | None = None,
    ) -> None:
        """`student_max_len`: the student model's positions (a longer record is skipped as too long)."""
        self.cfg, self.tokenizer, self.engines, self.stop = cfg, tokenizer, engines, stop
        self.clock = clock or (lambda phase: nullcontext())
        self.student_max_len = student_max_len
        self.stop_ids = stop_token_ids(tokenizer)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def teacher(
        self,
        operations: list[tuple[Task, list[Example], int]],
        round_index: int,
        hold: Callable[[str], bool] | None = None,
        check: bool = True,
    ) -> tuple[list[tuple[list[dict[str, Any]], TargetCounts]], float]:
        """Sample the teacher on T_teacher(x) for each operation `(task, inputs, ensemble K)` and
        keep its signal on f(y): each operation's records and counts, and the seconds that
        generation took. With K > 1 the signal is the mean over K prompt variants
        (`ensemble_signal`). Every operation's prompts go to the engines in one call, so they
        decode together: a call per operation would decode them one after the other. `hold`:
        as in `student`; without it the engines answer with what they hold."""
        t = self.cfg.teacher
        prompts = [
            [self.tokenizer(task.teacher_prompt(x))["input_ids"] for x in inputs] for task, inputs, _ in operations
        ]
        # No per-request seeds: on vLLM's CPU backend a seeded request whose sampled token is
        # discarded (a prompt split across prefill chunks) fails with "CPU Generator does not
        # use offset". Sampling is reproducible from the engines' seeds for a fixed layout.
        # A prompt that leaves no room to generate in the engine's context is skipped and
        # counted as too long (the round fails if too many are).
        sampling = {"temperature": t.temperature, "max_tokens": t.max_new_tokens, "logprobs": t.top_k}
        every_prompt = [p for op_prompts in prompts for p in op_prompts]
        with self.clock("generate"):
            start = time.perf_counter()
            base = hold("teacher") if hold is not None and every_prompt else False
            every_output = self.engines.generate_fitting(
                every_prompt, sampling, f"round {round_index} teacher", self.stop, base
            )
            generate_s = time.perf_counter() - start
        results, offset = [], 0
        for (task, inputs, ensemble), op_prompts in zip(operations, prompts):
            outputs, offset = every_output[offset : offset + len(op_prompts)], offset + len(op_prompts)
            generated_tokens = sum(len(o["token_ids"]) for o in outputs if o is not None)
            if ensemble > 1:
                with self.clock("generate"):
                    self.ensemble_signal(task, inputs, outputs, ensemble, f"round {round_index} ensemble", base)
            with self.clock("targets"):
                records, counts = self.from_outputs(task, inputs, outputs, round_index, check=check)
            counts.generated_tokens = generated_tokens
            results.append((records, counts))
        return results, generate_s

    def student(
        self,
        operations: list[tuple[Task, list[Example]]],
        round_index: int,
        hold: Callable[[str], bool],
        check: bool = True,
    ) -> tuple[list[tuple[list[dict[str, Any]], TargetCounts]], float]:
        """On-policy targets for each operation `(task, inputs)`: the student samples y on
        T_student(x) (with the logprob of each token it drew), then the teacher reads
        T_teacher(x) + y and gives its top-k at every position of y (`prompt_logprobs`). For a
        task whose teacher reasons first, it reads T_teacher(x) + its own reasoning + y's answer
        (`teacher_reasoning`). The records are the student's prompt and y's answer tokens, as
        from the teacher. `hold(role)` makes the engines answer as "student" or "teacher" and
        says whether the teacher's requests must ask for the base weights (an adapter held
        beside them)."""
        t = self.cfg.teacher
        tasks = [task for task, xs in operations for _ in xs]
        examples = [x for _, xs in operations for x in xs]
        student_prompts = [self.tokenizer(task.student_prompt(x))["input_ids"] for task, x in zip(tasks, examples)]
        sampling = {"temperature": t.temperature, "max_tokens": t.max_new_tokens, "logprobs": 0}
        with self.clock("generate"):
            start = time.perf_counter()
            base = hold("student")
            samples = self.engines.generate_fitting(
                student_prompts, sampling, f"round {round_index} student", self.stop, base
            )
            base = hold("teacher")
            starts = [self._answer_start(task, out) for task, out in zip(tasks, samples)]
            reasoning = self.teacher_reasoning(tasks, examples, starts, round_index, base)
            readings = self._teacher_reads(tasks, examples, samples, starts, reasoning, round_index, base)
            generate_s = time.perf_counter() - start
        results, offset = [], 0
        for task, inputs in operations:
            part = slice(offset, offset + len(inputs))
            offset += len(inputs)
            with self.clock("targets"):
                records, counts = self.from_outputs(
                    task, inputs, samples[part], round_index, readings[part], self._student_record, check
                )
            if task.teacher_reasons_first:  # what the teacher read before y's answer, for inspection
                for record in records:
                    ids = reasoning[part.start + record["index"]]
                    record.update(teacher_reasoning=self.decode(ids), teacher_reasoning_ids=ids)
            counts.generated_tokens = sum(len(o["token_ids"]) for o in samples[part] if o is not None)
            if self.cfg.data.teacher_reasoning == "sampled":  # and its reasoning (not the answer after it)
                counts.generated_tokens += sum(len(r) for r in reasoning[part] if isinstance(r, list))
            results.append((records, counts))
        return results, generate_s

    def teacher_reasoning(
        self,
        tasks: list[Task],
        examples: list[Example],
        starts: list[int | None],
        round_index: int,
        base_weights: bool,
    ) -> list[list[int] | str]:
        """For each student sample with an answer (`starts`: its first token, or None) whose
        task's teacher reasons before it answers (`Task.teacher_reasons_first`: a scratchpad),
        the teacher's own reasoning: it samples T_teacher(x) and keeps its tokens before its
        answer, and reads the student's answer after them, where it would have written its own
        (with `data.teacher_reasoning: gold`, the task's gold demonstration's instead, without
        generating). Other samples: no tokens.
        Where the teacher's sample (or the gold) has no whole answer, the skip reason "no_reasoning"."""
        reasoning: list[list[int] | str] = [[] for _ in starts]
        # a sample without an answer is skipped: no reasoning for it
        wanted = [i for i, first in enumerate(starts) if tasks[i].teacher_reasons_first and first is not None]
        if not wanted:
            return reasoning
        if self.cfg.data.teacher_reasoning == "gold":
            for i in wanted:
                demo = tasks[i].teacher_demonstration(examples[i])
                ids = [] if demo is None else self.tokenizer(demo, add_special_tokens=False)["input_ids"]
                first = self._answer_start(tasks[i], {"token_ids": ids, "finish_reason": "stop"})
                reasoning[i] = "no_reasoning" if first is None else ids[:first]
            return reasoning
        t = self.cfg.teacher
        prompts = [self.tokenizer(tasks[i].teacher_prompt(examples[i]))["input_ids"] for i in wanted]
        sampling = {"temperature": t.temperature, "max_tokens": t.max_new_tokens, "logprobs": 0}
        outs = self.engines.generate_fitting(
            prompts, sampling, f"round {round_index} teacher reasons", self.stop, base_weights
        )
        for i, out in zip(wanted, outs):
            first = self._answer_start(tasks[i], out)
            reasoning[i] = "no_reasoning" if first is None else list(out["token_ids"][:first])
        return reasoning

    def _teacher_reads(
        self,
        tasks: list[Task],
        examples: list[Example],
        samples: list[dict[str, Any] | None],
        starts: list[int | None],
        reasoning: list[list[int] | str],
        round_index: int,
        base_weights: bool,
    ) -> list[Any]:
        """The teacher reads each student sample after T_teacher(x) and its reasoning, in one
        prefill (`prompt_logprobs`): per sample, its rows at y's positions (empty before what it
        read), or None where it was not read, or the reason (a str) its reasoning failed."""
        t = self.cfg.teacher
        jobs, prompts = [], []  # (sample index, the teacher's text before y, y's first token read)
        for i, (task, x, out, first) in enumerate(zip(tasks, examples, samples, starts)):
            if first is None or isinstance(reasoning[i], str):
                continue  # skipped by the record maker, which counts why
            read_from = first if task.teacher_reasons_first else 0  # after reasoning, only the answer
            context = self.tokenizer(task.teacher_prompt(x))["input_ids"] + reasoning[i]
            jobs.append((i, len(context), read_from))
            prompts.append(context + out["token_ids"][read_from:])
        scoring = {"temperature": 0.0, "max_tokens": 1, "prompt_logprobs": t.top_k}
        scored = self.engines.generate_fitting(
            prompts, scoring, f"round {round_index} teacher reads", self.stop, base_weights
        )
        readings: list[Any] = [r if isinstance(r, str) else None for r in reasoning]
        for (i, at, read_from), out in zip(jobs, scored):
            if out is not None:  # the row at prompt position p predicts the token at p
                rows = FlatTopk(out, prefix="prompt_")
                y = samples[i]["token_ids"]
                readings[i] = [rows[at + j - read_from] if j >= read_from else {} for j in range(len(y))]
        return readings

    def _answer_start(self, task: Task, out: dict[str, Any] | None) -> int | None:
        """The first token of the answer in a generation, or None where it has no whole,
        aligned answer (the record maker counts why)."""
        if out is None or not out["token_ids"] or self._lost_to_the_cut(task, out):
            return None
        span = task.answer_span(self.decode(out["token_ids"]))
        try:
            return None if span is None else answer_token_range(out["token_ids"], span, self.decode)[0]
        except ValueError:
            return None

    def ensemble_signal(
        self,
        task: Task,
        examples: list[Example],
        outputs: list[dict[str, Any] | None],
        k: int,
        desc: str,
        base_weights: bool = False,
    ) -> None:
        """Replace each output's logprobs with the ensemble teacher's (paper H5, App. B.5): the
        sampled y is scored under K prompt variants (`prompt_logprobs`, one prefill each) and
        every generated position gets the mean of the K distributions. An output cut off by
        max_new_tokens is scored when its task keeps it (`Task.answer_survives_cut`), and left to
        be skipped otherwise. One whose scoring prompts do not all fit the engine's context is
        dropped (counted as too long)."""
        t = self.cfg.teacher
        jobs, prompts = [], []  # (output index, length of the variant's prompt)
        for i, (x, out) in enumerate(zip(examples, outputs)):
            if out is None or self._lost_to_the_cut(task, out):
                continue
            variants = [
                self.tokenizer(task.teacher_prompt_variant(x, v))["input_ids"] + out["token_ids"] for v in range(k)
            ]
            if max(map(len, variants)) >= t.max_model_len:
                outputs[i] = None  # no ensemble signal for it: skipped and counted as too long
                continue
            jobs += [(i, len(p) - len(out["token_ids"])) for p in variants]
            prompts += variants
        scoring = [{"temperature": 0.0, "max_tokens": 1, "prompt_logprobs": t.top_k}] * len(prompts)
        scored = self.engines.generate(prompts, scoring, desc, self.stop, base_weights)
        for start in range(0, len(jobs), k):
            i = jobs[start][0]
            rows = [FlatTopk(scored[start + v], prefix="prompt_") for v in range(k)]
            # Generated position j is predicted at prompt position len(variant prompt) + j.
            averaged = [
                average_topk([rows[v][jobs[start + v][1] + j] for v in range(k)])
                for j in range(len(outputs[i]["token_ids"]))
            ]
            outputs[i] = {**outputs[i], **flatten_topk(averaged)}

    def _lost_to_the_cut(self, task: Task, out: dict[str, Any]) -> bool:
        """Cut off by max_new_tokens, and not kept: skipped unless the task knows its answer is whole."""
        if out["finish_reason"] != "length":
            return False
        completion = self.decode(out["token_ids"])
        span = task.answer_span(completion)
        return span is None or not task.answer_survives_cut(completion, span)

    def from_outputs(
        self,
        task: Task,
        examples: list[Example],
        outputs: list[dict[str, Any] | None],
        round_index: int,
        readings: list[Any] | None = None,
        make_record: Callable[..., tuple[str | None, dict[str, Any]]] | None = None,
        check: bool = True,
    ) -> tuple[list[dict[str, Any]], TargetCounts]:
        """Records from the teacher's outputs; `outputs[i]` is None where the prompt was too
        long. On-policy: the student's outputs, `readings[i]` the teacher's rows at their
        positions, and `make_record` the student's record maker. `check`: `check_kept` the result
        (a caller that merges parts of one operation checks the whole)."""
        records, counts = [], TargetCounts(generated=sum(o is not None for o in outputs))
        readings = readings or [None] * len(outputs)
        for i, (x, out, reading) in enumerate(zip(examples, outputs, readings)):
            if make_record is None:
                skipped, record = self._teacher_record(task, x, out)
            else:
                skipped, record = make_record(task, x, out, reading)
            if skipped:
                setattr(counts, skipped, getattr(counts, skipped) + 1)
            else:
                records.append({"index": i, **record})
        counts.kept = len(records)
        if check:
            self.check_kept(counts, len(outputs), round_index)
        return records, counts

    def check_kept(self, counts: TargetCounts, inputs: int, round_index: int) -> None:
        """Fail the round when too many of an operation's inputs were skipped, or fewer than a
        batch are left (checked on the whole operation, its teacher's and student's parts together)."""
        t, skipped = self.cfg.teacher, inputs - counts.kept
        if skipped > t.max_answer_skip_fraction * inputs or counts.kept < self.cfg.student.batch_size:
            raise RunFailed(
                f"round {round_index}: {skipped} of {inputs} inputs skipped ({counts.as_dict()}); above "
                f"teacher.max_answer_skip_fraction={t.max_answer_skip_fraction} or fewer left than one batch "
                f"(too_long: prompts of teacher.max_model_len={t.max_model_len} tokens or more)"
            )

    def _aligned(
        self, task: Task, x: Example, out: dict[str, Any] | None, rows: Any
    ) -> tuple[str | None, tuple[Any, str, tuple[int, int]] | None]:
        """(the TargetCounts field an output `out` is skipped as, or None) and, when kept, its
        `StudentRecord` (the teacher's `rows` at the generated positions, aligned to the
        student's prompt), its decoded completion and its answer span."""
        if out is None:
            return "too_long", None
        if self._lost_to_the_cut(task, out):
            return "truncated", None
        completion = self.decode(out["token_ids"])
        span = task.answer_span(completion)
        if span is None:
            return "no_answer", None
        if rows is None or isinstance(rows, str):  # on-policy: the teacher did not read y (`student`)
            if self._answer_start(task, out) is None:
                return "unaligned", None  # not read because its answer is not whole tokens
            return rows or "too_long", None  # its reasoning failed, or reasoning + y did not fit
        student_ids = self.tokenizer(task.student_prompt(x))["input_ids"]
        try:
            rec = build_student_record(
                student_ids,
                out["token_ids"],
                rows,
                span,
                self.decode,
                self.stop_ids,
                self.cfg.teacher.top_k,
            )
        except ValueError:
            return "unaligned", None  # the answer's characters do not map onto whole generated tokens
        if self.student_max_len is not None and len(rec.input_ids) > self.student_max_len:
            return "too_long", None
        return None, (rec, completion, span)

    def _teacher_record(self, task: Task, x: Example, out: dict[str, Any] | None) -> tuple[str | None, dict[str, Any]]:
        """(the TargetCounts field it is skipped as, or None) and the record of one teacher output."""
        skipped, kept = self._aligned(task, x, out, None if out is None else FlatTopk(out))
        if kept is None:
            return skipped, {}
        rec, completion, span = kept
        answer = completion[span[0] : span[1]]
        return None, {
            "input": x.input,
            "gold": x.gold,
            "source": "teacher",
            "teacher_completion": completion,
            "answer": answer,
            # A synthetic input of a records task has no gold to score against.
            "teacher_correct": None if x.gold is None else task.score(x, answer),
            **vars(rec),
        }

    def _student_record(
        self, task: Task, x: Example, out: dict[str, Any] | None, reading: list[dict[str, float]] | None
    ) -> tuple[str | None, dict[str, Any]]:
        """(the TargetCounts field it is skipped as, or None) and the record of one student
        sample `out` with the teacher's rows `reading` at its positions."""
        skipped, kept = self._aligned(task, x, out, reading)
        if kept is None:
            return skipped, {}
        rec, completion, span = kept
        first, _ = answer_token_range(out["token_ids"], span, self.decode)  # aligned above, so it cannot fail
        sampled = FlatTopk(out)
        answer = completion[span[0] : span[1]]
        return None, {
            "input": x.input,
            "gold": x.gold,
            "source": "student",
            "student_completion": completion,
            "answer": answer,
            "sample_correct": None if x.gold is None else task.score(x, answer),
            "sample_logprobs": [sampled[first + j][token] for j, token in enumerate(rec.answer_ids)],
            "sample_token_ids": out["token_ids"],  # all of y, which the teacher read
            "sample_answer_start": first,  # where in y the answer (the record's targets) starts
            **vars(rec),
        }

    def gold(self, task: Task, examples: list[Example], kind: str) -> tuple[list[dict[str, Any]], TargetCounts]:
        """Supervised records for `targets: gold` (student prompt, gold answer),
        `gold_demonstration` (teacher prompt, the task's gold demonstration) or `text` (the
        student prompt itself as plain language-modelling data, e.g. replay), as one-hot rows.
        A record longer than the student model's positions is skipped as too long."""
        records, counts = [], TargetCounts()
        for i, x in enumerate(examples):
            if kind == "text":
                target = task.student_prompt(x)
                ids = self.tokenizer(target)["input_ids"]
                prompt_ids, target_ids = ids[:1], ids[1:]  # every token after the first
            else:
                gold = kind == "gold"
                prompt = task.student_prompt(x) if gold else task.teacher_prompt(x)
                target = task.gold_completion(x) if gold else task.teacher_demonstration(x)
                if target is None:
                    counts.no_answer += 1  # no gold answer, or a task that writes no demonstration
                    continue
                prompt_ids = self.tokenizer(prompt)["input_ids"]
                target_ids = self.tokenizer(target, add_special_tokens=False)["input_ids"]
            rec = gold_record(prompt_ids, target_ids, self.tokenizer.eos_token_id)
            if self.student_max_len is not None and len(rec.input_ids) > self.student_max_len:
                counts.too_long += 1
                continue
            records.append({"index": i, "input": x.input, "gold": x.gold, "target": target, **vars(rec)})
        counts.kept = len(records)
        if len(records) < self.cfg.student.batch_size:
            raise RunFailed(
                f"{kind} targets: only {len(records)} examples with a target ({counts.as_dict()}); "
                "fewer than student.batch_size"
            )
        return records, counts
