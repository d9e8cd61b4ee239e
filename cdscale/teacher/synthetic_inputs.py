"""Synthetic raw inputs: D sampled from the teacher model itself by few-shot prompting
(paper sections 3.1-3.2: "the raw task inputs are sampled from the same teacher model via
few-shot prompting").

Each request shows the engines a random handful of real inputs (`Task.input_generation_prompt`)
and takes the first line of the continuation as a candidate, which `Task.parse_input`
accepts or rejects with a reason. Candidates are deduplicated, held-out inputs are dropped
(evaluation stays unseen), and every drop is counted by its reason. The shots come from a
seeded stream and the engines are seeded, so a run with the same seed and engine layout
draws the same inputs.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable

from cdscale.tasks import Example, Task, is_held_out, sample_where

if TYPE_CHECKING:
    from cdscale.config import OperationConfig
    from cdscale.teacher.group import EngineGroup


def line_break_token_ids(tokenizer: Any) -> list[int]:
    """Every token whose text holds a line break. Only a continuation's first line is a
    candidate, so the engines stop at it rather than sample on to the token cap: on
    configs/instructions.yaml on SmolLM2 a continuation took 5.4 tokens instead of 44.5, and the
    sampling 52 s instead of 140 (benchmarks/synthetic_inputs.py, docs/performance.md)."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return [i for i, text in enumerate(texts) if "\n" in text]


def first_line(completion: str, finished: bool) -> str | None:
    """The continuation's first line; None when the generation was cut off inside it."""
    if "\n" in completion:
        return completion.split("\n", 1)[0]
    return completion if finished else None


def keep_inputs(task: Task, lines: list[str | None], seen: set[str]) -> tuple[list[Example], Counter]:
    """Parse candidate lines into new inputs (adding them to `seen`); count every drop by reason."""
    counts: Counter = Counter(generated=len(lines))
    kept = []
    for line in lines:
        if line is None:
            counts["malformed: cut off"] += 1
            continue
        parsed = task.parse_input(line)
        if isinstance(parsed, str):
            counts[f"malformed: {parsed}"] += 1
        elif is_held_out(parsed, task.held_out_per_mille):
            counts["held_out"] += 1
        elif parsed.input in seen:
            counts["duplicate"] += 1
        else:
            seen.add(parsed.input)
            kept.append(parsed)
    return kept, counts


class _Synthesis:
    """One operation's synthetic inputs, gathered pass by pass."""

    def __init__(
        self, tokenizer: Any, task: Task, op: OperationConfig, rng: random.Random, stop_ids: list[int], desc: str
    ) -> None:
        self.tokenizer, self.task, self.op, self.rng = tokenizer, task, op, rng
        self.sampling = {
            "temperature": op.synthetic_temperature,
            "max_tokens": op.synthetic_max_new_tokens,
            "stop_token_ids": stop_ids,
        }
        self.pool = sample_where(task, 16 * op.synthetic_shots, rng, held_out=False, what=f"{desc} shots")
        self.examples: list[Example] = []
        self.seen: set[str] = set()
        self.counts: Counter = Counter()

    def prompts(self, pass_index: int) -> list[list[int]]:
        """This pass's requests: what is still missing, scaled by the share of candidates kept
        so far (a quarter more at first); none once done or out of passes."""
        need = self.op.num_train - len(self.examples)
        if need <= 0 or pass_index >= self.op.synthetic_max_passes:
            return []
        asked = self.counts["generated"]
        kept_share = max(len(self.examples) / asked, 0.05) if asked else 0.8
        return [
            self.tokenizer(self.task.input_generation_prompt(self.rng.sample(self.pool, self.op.synthetic_shots)))[
                "input_ids"
            ]
            for _ in range(math.ceil(1.1 * need / kept_share))
        ]

    def take(self, outputs: list[dict[str, Any]]) -> None:
        lines = [
            first_line(self.tokenizer.decode(o["token_ids"], skip_special_tokens=True), o["finish_reason"] == "stop")
            for o in outputs
        ]
        kept, pass_counts = keep_inputs(self.task, lines, self.seen)
        self.examples += kept
        self.counts.update(pass_counts)

    def result(self) -> tuple[list[Example], dict[str, int]]:
        n = self.op.num_train
        counts = {**self.counts, "kept": min(n, len(self.examples)), "unused": max(len(self.examples) - n, 0)}
        return self.examples[:n], counts


def synthesize_inputs(
    engines: EngineGroup,
    tokenizer: Any,
    jobs: list[tuple[Task, OperationConfig, random.Random]],
    desc: str,
    stop: Callable[[], bool] | None = None,
) -> list[tuple[list[Example], dict[str, int]]]:
    """For each (task, operation, rng): up to op.num_train distinct new inputs in at most
    `op.synthetic_max_passes` generations, and the counts. Each pass of every operation goes
    to the engines in one call (one batch, instead of a short call per operation)."""
    stop_ids = line_break_token_ids(tokenizer)
    jobs_state = [_Synthesis(tokenizer, task, op, rng, stop_ids, f"{desc}, {op.name}") for task, op, rng in jobs]
    for pass_index in range(max(op.synthetic_max_passes for _, op, _ in jobs)):
        asked = [(job, job.prompts(pass_index)) for job in jobs_state]
        prompts = [p for _, ps in asked for p in ps]
        if not prompts:
            break
        outputs = engines.generate(prompts, [job.sampling for job, ps in asked for _ in ps], desc, stop)
        start = 0
        for job, ps in asked:
            job.take(outputs[start : start + len(ps)])
            start += len(ps)
    return [job.result() for job in jobs_state]
