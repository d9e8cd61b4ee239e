"""Tasks: the paper's four parts of one distillation operation (section 2.1).

A task says where raw inputs come from (D), how the teacher and the student are
prompted (T_teacher, T_student), how the final answer is cut out of a generation (f),
and how an answer is scored. Add a task by writing one module with a `Task` subclass
and registering it with `@register_task("name")`.
"""

from __future__ import annotations

import importlib
import random
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

from cdscale.config import ConfigError

HELD_OUT_PER_MILLE = 100


@dataclass(frozen=True)
class Example:
    """One raw task input x, with its gold answer when the source knows it."""

    input: str
    gold: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Task(ABC):
    """(D, T_teacher, T_student, f) plus a scorer. Subclasses take their options as kwargs."""

    name: str = ""
    held_out_per_mille: int = HELD_OUT_PER_MILLE  # the share of the input space kept for evaluation (`is_held_out`)
    checks: list = []  # rules scored on every evaluated response (`cdscale/tasks/checks.py`), as compliance rates
    # Answers are whole responses, mostly without gold: evaluated by the context gap (and drift
    # on `drift_examples`, prompts unrelated to the context), as well as by rules and gold.
    open_ended: bool = False
    drift_examples: list = []
    # The teacher writes reasoning (a scratchpad) before its answer, and the student answers
    # directly. On-policy the teacher then reads its own reasoning before the student's answer:
    # after T_teacher(x) alone it would open a scratchpad, not judge an answer.
    teacher_reasons_first: bool = False

    def use_tokenizer(self, tokenizer: Any, max_model_len: int) -> None:
        """Called once the model's tokenizer is loaded, before any prompt is written: a task whose
        prompts the model's own chat template renders keeps it (and checks that its context fits)."""
        return None  # the other tasks write their prompts as plain text

    @abstractmethod
    def sample_inputs(self, n: int, rng: random.Random) -> list[Example]:
        """D: draw n raw inputs."""

    @abstractmethod
    def teacher_prompt(self, x: Example) -> str:
        """T_teacher: the rich prompt (instructions, examples, a scratchpad request)."""

    @abstractmethod
    def student_prompt(self, x: Example) -> str:
        """T_student: the minimal prompt the distilled model answers without context."""

    @abstractmethod
    def answer_span(self, completion: str) -> tuple[int, int] | None:
        """f: the [start, end) characters of the final answer in a generation, or None
        when no answer can be extracted. A span (not a string) lets the trainer reuse the
        teacher's own answer tokens and their logprobs."""

    def answer_survives_cut(self, completion: str, span: tuple[int, int]) -> bool:
        """Whether the answer at `span` is whole in a generation that max_new_tokens cut off.
        By default no: the cut may fall inside the answer, so such generations are skipped."""
        return False

    def extract_answer(self, completion: str) -> str | None:
        span = self.answer_span(completion)
        return None if span is None else completion[span[0] : span[1]]

    @abstractmethod
    def score(self, x: Example, answer: str | None) -> float | None:
        """1.0 for a correct answer, 0.0 for a wrong or missing one (or a graded value); None
        when the input has no gold to score against (a chat task's rules score it instead)."""

    def teacher_prompt_variant(self, x: Example, variant: int) -> str:
        """The teacher prompt with its `variant`-th choice of context (e.g. another k-of-n
        subset of in-context examples) for an ensemble teacher (paper H5); variant 0 is
        `teacher_prompt(x)`. Tasks with one teacher prompt do not override this."""
        raise ConfigError(
            f"task {self.name or type(self).__name__!r} has a single teacher prompt; an ensemble needs prompt variants"
        )

    def gold_completion(self, x: Example) -> str | None:
        """The gold answer as the text that follows the student prompt (`targets: gold`)."""
        return x.gold

    def demonstration_examples(self) -> list[Example]:
        """The in-context examples the teacher's prompts show, for an operation with `inputs:
        demonstrations`: direct gradient descent on the same examples (the paper's H4 baseline)."""
        raise ConfigError(f"task {self.name or type(self).__name__!r} has no fixed in-context examples to train on")

    def input_generation_prompt(self, shots: list[Example]) -> str:
        """A few-shot prompt whose continuation's first line is a new raw input (synthetic
        D, paper sections 3.1-3.2): the shots' inputs, one per line after "Input:"."""
        return "".join(f"Input: {x.input}\n" for x in shots) + "Input:"

    def parse_input(self, line: str) -> Example | str:
        """A generated line as an input (with its gold when the task can compute one), or
        the reason it is not one."""
        line = line.strip()
        return Example(input=line) if line else "empty"

    def teacher_demonstration(self, x: Example) -> str | None:
        """The gold teacher-format completion, when the task can write one. Used only to
        bootstrap a model with the teacher's skill (`cdscale bootstrap`)."""
        return None


def held_out_option(value: Any) -> int:
    """A task's `held_out_per_mille` option, checked (a ValueError naming it otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 1000:
        raise ValueError(f"held_out_per_mille: must be in [1, 999], got {value}")
    return value


def is_held_out(x: Example, per_mille: int) -> bool:
    """A fixed partition of every task's input space by a stable hash of the input.

    Evaluation draws only held-out inputs; bootstrap and distillation never train on one.
    Seeds alone cannot promise this: two seeded streams can draw the same inputs. A task
    with a small, finite input space (a file of a few dozen questions) holds out a larger
    share, so that its evaluation has enough problems: callers pass the task's own
    `Task.held_out_per_mille` (no default, so no caller can use another task's partition).
    """
    return zlib.crc32(x.input.encode()) % 1000 < per_mille


def sample_where(
    task: Task,
    n: int,
    rng: random.Random,
    held_out: bool,
    distinct: bool = False,
    what: str = "inputs",
    exclude: frozenset[str] = frozenset(),
) -> list[Example]:
    """Draw n inputs from D restricted to one side of the held-out partition (and distinct
    if asked, and none of the inputs in `exclude`), or fail clearly when the task's input
    space is too small for n."""
    picked: list[Example] = []
    seen: set[str] = set()
    tries = since_last_pick = 0
    while len(picked) < n:
        # 100,000 draws without one usable input: the input space is spent (a count far beyond
        # it fails in seconds, not after 100 draws per input wanted).
        if tries > 100 * n + 10_000 or since_last_pick > 100_000:
            raise ConfigError(
                f"{what}: found only {len(picked)} of {n} {'distinct ' if distinct else ''}"
                f"{'held-out' if held_out else 'training'} inputs after {tries} draws; the task's input "
                f"space is too small (widen task.options or lower the count)"
            )
        # In batches, so that memory follows what is picked, not what is asked for; the draws
        # are the same one by one, so the inputs do not depend on the batch size.
        batch = task.sample_inputs(min(n - len(picked), 10_000), rng)
        tries += len(batch)
        for x in batch:
            since_last_pick += 1
            wanted = is_held_out(x, task.held_out_per_mille) == held_out and x.input not in exclude
            if wanted and not (distinct and x.input in seen):
                picked.append(x)
                seen.add(x.input)
                since_last_pick = 0
    return picked[:n]


_REGISTRY: dict[str, type[Task]] = {}
_BUILTIN_MODULES = {
    "addition": "cdscale.tasks.addition",
    "arithmetic": "cdscale.tasks.arithmetic",
    "chat": "cdscale.tasks.chat",
    "records": "cdscale.tasks.records",
    "text_to_sql": "cdscale.tasks.text_to_sql",
}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    def wrap(cls: type[Task]) -> type[Task]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def build_task(name: str, options: dict[str, Any] | None = None) -> Task:
    """Build a task by registered name, or by "package.module:Class" for a user's own task."""
    if ":" in name:
        module_name, cls_name = name.split(":", 1)
        cls = getattr(importlib.import_module(module_name), cls_name)
    else:
        if name in _BUILTIN_MODULES:
            importlib.import_module(_BUILTIN_MODULES[name])
        if name not in _REGISTRY:
            known = sorted(set(_REGISTRY) | set(_BUILTIN_MODULES))
            raise ConfigError(f"task.name: unknown task {name!r}; known tasks: {known}, or 'module:Class'")
        cls = _REGISTRY[name]
    try:
        return cls(**(options or {}))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"task.options: {err}") from None
