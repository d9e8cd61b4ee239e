"""Scratchpad addition (paper section 3.3), in the scratchpad format of Nye et al. 2021.

Digits are space-separated. The scratchpad works right to left and tracks the carry C:

    Input:
    2 9 + 5 7
    Target:
    <scratch>
    2 9 + 5 7 , C: 0
    2 + 5 , 6 C: 1
    , 8 6 C: 0
    0 8 6
    </scratch>
    8 6

The teacher is asked for a "Target:" (scratchpad, then answer); the student for an
"Answer:" directly.
"""

from __future__ import annotations

import random
import re

from cdscale.tasks import Example, Task, register_task
from cdscale.tasks.records import RecordError, load_records

SCRATCH_OPEN, SCRATCH_CLOSE = "<scratch>", "</scratch>"
_DIGITS = re.compile(r"\d( \d)*")
_PROBLEM = re.compile(r"(\d(?: \d)*) \+ (\d(?: \d)*)")


def spaced(digits: str) -> str:
    return " ".join(digits)


def random_number(rng: random.Random, n: int) -> int:
    """An n-digit number, digits uniform (no leading zero)."""
    return rng.randint(0 if n == 1 else 10 ** (n - 1), 10**n - 1)


def operands(line: str) -> tuple[int, int] | str:
    """The two numbers of a spaced sum such as "4 1 + 3 7", or why the line is not one."""
    match = _PROBLEM.fullmatch(line.strip())
    if match is None:
        return "not a sum of two spaced numbers"
    if any(g.startswith("0 ") for g in match.groups()):
        return "leading zero"
    a, b = (int(group.replace(" ", "")) for group in match.groups())
    return a, b


def scratchpad(a: int, b: int) -> str:
    """The Nye et al. scratchpad for a + b, including the markup lines."""
    left_a, left_b = str(a), str(b)
    result, carry = "", 0
    lines = []
    while True:
        operands = " + ".join(s for s in (spaced(left_a), spaced(left_b)) if s)
        lines.append(
            (operands + " " if operands else "") + ", " + (spaced(result) + " " if result else "") + f"C: {carry}"
        )
        if not left_a and not left_b:
            break
        da = int(left_a[-1]) if left_a else 0
        db = int(left_b[-1]) if left_b else 0
        carry, digit = divmod(da + db + carry, 10)
        result = str(digit) + result
        left_a, left_b = left_a[:-1], left_b[:-1]
    lines.append(spaced(str(carry) + result))
    return "\n".join([SCRATCH_OPEN, *lines, SCRATCH_CLOSE])


@register_task("addition")
class Addition(Task):
    """D: each operand's digit count uniform in [min_digits, max_digits], then digits uniform
    (the paper's prose: "uniform over all 1 through 8 digit addition questions"). With
    `same_length`, one digit count uniform in the range for both operands: the distribution
    of the authors' code and test set (`src/scratchpads.py`), where 8 + 8 digits is an eighth
    of the problems rather than a sixty-fourth.

    With `problems` (a records file, such as the `train_problems.jsonl` of a teacher
    bootstrapped with `--problems`), D is that fixed set of labelled problems instead, drawn
    uniformly with repeats, as the `records` task draws; each problem's gold scratchpad is
    computed from it, so a baseline can train on gold scratchpads (Sc+Dir) and gold answers
    (Sc->Dir) of exactly the problems the teacher learned. The digit options then do not apply."""

    teacher_reasons_first = True

    def __init__(
        self,
        min_digits: int | None = None,
        max_digits: int | None = None,
        same_length: bool | None = None,
        problems: str | None = None,
    ):
        self.problems: list[Example] | None = None
        if problems is not None:
            digit_options = {"min_digits": min_digits, "max_digits": max_digits, "same_length": same_length}
            given = [name for name, value in digit_options.items() if value is not None]
            if given:
                raise ValueError(f"problems: the file is the distribution; {', '.join(given)} do not apply with it")
            self.problems = [self._problem(x, f"{problems} line {line}") for line, x in load_records(problems)]
        min_digits, max_digits = 1 if min_digits is None else min_digits, 8 if max_digits is None else max_digits
        if not 1 <= min_digits <= max_digits:
            raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
        if same_length is not None and not isinstance(same_length, bool):
            raise ValueError(f"same_length: must be true or false, got {same_length!r}")
        self.min_digits, self.max_digits, self.same_length = min_digits, max_digits, bool(same_length)

    @staticmethod
    def _problem(record: Example, where: str) -> Example:
        """A record of the problems file as this task's input, its sum checked."""
        parsed = operands(record.input)
        if isinstance(parsed, str):
            raise RecordError(f"{where}: input {record.input!r}: {parsed}, such as '4 1 + 3 7'")
        a, b = parsed
        gold = spaced(str(a + b))
        if record.gold.strip() != gold:
            raise RecordError(f"{where}: gold {record.gold!r} is not the sum {gold!r}")
        return Example(input=record.input.strip(), gold=gold, meta={"a": a, "b": b})

    def sample_inputs(self, n: int, rng: random.Random) -> list[Example]:
        if self.problems is not None:
            return [self.problems[rng.randrange(len(self.problems))] for _ in range(n)]
        out = []
        for _ in range(n):
            # The draws in this order keep the independent-length stream of earlier versions.
            digits = rng.randint(self.min_digits, self.max_digits)
            a = random_number(rng, digits)
            b = random_number(rng, digits if self.same_length else rng.randint(self.min_digits, self.max_digits))
            out.append(
                Example(input=f"{spaced(str(a))} + {spaced(str(b))}", gold=spaced(str(a + b)), meta={"a": a, "b": b})
            )
        return out

    def teacher_prompt(self, x: Example) -> str:
        return f"Input:\n{x.input}\nTarget:\n"

    def student_prompt(self, x: Example) -> str:
        return f"Input:\n{x.input}\nAnswer:\n"

    def answer_span(self, completion: str) -> tuple[int, int] | None:
        # f strips the scratchpad; a direct answer has none to strip.
        start = 0
        if SCRATCH_OPEN in completion:
            close = completion.find(SCRATCH_CLOSE)
            if close < 0:
                return None
            start = close + len(SCRATCH_CLOSE)
        match = _DIGITS.search(completion, start)
        if match is None or completion[start : match.start()].strip():
            return None
        return match.span()

    def score(self, x: Example, answer: str | None) -> float:
        return float(answer is not None and answer.strip() == x.gold)

    def input_generation_prompt(self, shots: list[Example]) -> str:
        # The model's own input format, so a model that knows the task continues it.
        return "".join(f"Input:\n{x.input}\n" for x in shots) + "Input:\n"

    def parse_input(self, line: str) -> Example | str:
        parsed = operands(line)
        if isinstance(parsed, str):
            return parsed
        a, b = parsed
        if any(not self.min_digits <= len(str(n)) <= self.max_digits for n in (a, b)):
            return "operand outside the task's digit range"
        if self.same_length and len(str(a)) != len(str(b)):
            return "operands of different lengths"
        return Example(input=line.strip(), gold=spaced(str(a + b)), meta={"a": a, "b": b})

    def teacher_demonstration(self, x: Example) -> str:
        return f"{scratchpad(x.meta['a'], x.meta['b'])}\n{x.gold}"
