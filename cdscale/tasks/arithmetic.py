"""Four small tasks on a pair of numbers, named by an instruction, for the paper's task-id
experiment (H3, section 3.1) at tiny-model scale. All four give different answers on the
same input, so the answer shows which task the model performed.

The teacher is told the task ("Task: max"); the student sees only an id ("[2]") that it
must learn to associate with a task. Each task may draw its operands from its own digit
range, so the tasks' input distributions differ, as the paper's four datasets do: a
student trained on the "naive" inputs can then guess the task from the input alone and
ignore the id, which the "mixed" inputs prevent.

    Task: max               [2]
    Input:                  Input:
    4 7 , 1 2               4 7 , 1 2
    Answer:                 Answer:
    4 7                     4 7
"""

from __future__ import annotations

import random
import re

from cdscale.tasks import Example, Task, register_task
from cdscale.tasks.addition import random_number, spaced

OPERATIONS = {
    "max": max,
    "min": min,
    "first": lambda a, b: a,
    "second": lambda a, b: b,
}
_PAIR = re.compile(r"(\d(?: \d)*) , (\d(?: \d)*)")


@register_task("arithmetic")
class Arithmetic(Task):
    def __init__(self, operation: str = "max", min_digits: int = 2, max_digits: int = 5, task_id: str | None = None):
        """`task_id`: the student's prompt shows "[task_id]" instead of nothing (H3)."""
        if operation not in OPERATIONS:
            raise ValueError(f"operation: {operation!r} is not one of {sorted(OPERATIONS)}")
        if not 1 <= min_digits <= max_digits:
            raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
        self.operation, self.min_digits, self.max_digits, self.task_id = operation, min_digits, max_digits, task_id

    def _example(self, a: int, b: int) -> Example:
        answer = OPERATIONS[self.operation](a, b)
        return Example(input=f"{spaced(str(a))} , {spaced(str(b))}", gold=spaced(str(answer)), meta={"a": a, "b": b})

    def sample_inputs(self, n: int, rng: random.Random) -> list[Example]:
        lo, hi = self.min_digits, self.max_digits
        return [self._example(*(random_number(rng, rng.randint(lo, hi)) for _ in range(2))) for _ in range(n)]

    def teacher_prompt(self, x: Example) -> str:
        return f"Task: {self.operation}\nInput:\n{x.input}\nAnswer:\n"

    def student_prompt(self, x: Example) -> str:
        head = f"[{self.task_id}]\n" if self.task_id is not None else ""
        return f"{head}Input:\n{x.input}\nAnswer:\n"

    def answer_span(self, completion: str) -> tuple[int, int] | None:
        match = re.match(r"\s*(\d(?: \d)*)", completion)
        return match.span(1) if match else None

    def score(self, x: Example, answer: str | None) -> float:
        # Against this task's answer, not x.gold: an input drawn from another task's D (mixed
        # inputs, a wrong id) is scored by what this task asks.
        return float(answer is not None and answer.strip() == self.teacher_demonstration(x))

    def teacher_demonstration(self, x: Example) -> str:
        a, b = (int(g.replace(" ", "")) for g in _PAIR.fullmatch(x.input).groups())
        return self._example(a, b).gold
