"""A task read from a file of records: one JSON object per line, no code to write.

    {"input": "What is the capital of France?", "gold": "Paris"}

Both fields are required: every run evaluates on a held-out part of the file.

D draws records from the file uniformly (repeats allowed, as from any distribution; the
held-out partition still keeps evaluation inputs out of training). The teacher's prompt
adds `context` (instructions, examples) through `teacher_template`; the student sees
`student_template` alone. f is the first line with text in the completion, counted from
after the last `answer_marker` when one is set and present (so a teacher may reason first,
and a student that answers directly has no marker to find). The score is an exact match
after collapsing whitespace, or with `match: words` the gold's words in order anywhere in
the answer's line, ignoring case and punctuation (for a chat model that answers in a
sentence).

Records are checked when the task is built: a line that is not JSON, not an object, lacks
a field, has one of the wrong type, lacks a field a template uses, or is longer than
`max_record_bytes` (1 MiB by default; no more of it is read) is an error naming the file and
the line.
Fields other than `input` and `gold` are kept in `Example.meta` and usable in templates.
A small file may keep a larger share of itself for evaluation (`held_out_per_mille`; 100 by
default).

In-context examples come from a second records file (`demonstrations_path`) into the
`{demonstrations}` placeholder: the teacher's prompt shows a random k-of-n subset chosen per
input (`demonstrations_per_prompt`), and each prompt variant of an ensemble teacher its own
subset; a student template shows the first k, the same for every input.
"""

from __future__ import annotations

import json
import random
import re
import string
from pathlib import Path
from typing import Any

from cdscale.tasks import Example, Task, held_out_option, register_task


class RecordError(ValueError):
    pass


# A record is one line, read whole into memory: a file without line breaks (a JSON array, a
# binary file) would otherwise be read at once, however large.
MAX_RECORD_BYTES = 1 << 20


def load_records(path: str | Path, max_record_bytes: int = MAX_RECORD_BYTES) -> list[tuple[int, Example]]:
    """Parse and check a records file into (1-based line, example) pairs; every problem
    names the file and the line. No more than `max_record_bytes` of a line is read."""
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: records file does not exist")
    examples = []
    with open(path, "rb") as f:
        # Two bytes more than the limit: a line of exactly the limit may end in "\r\n", and a
        # longer line, cut by the read, keeps more than the limit after its "\r" is dropped.
        for number, raw in enumerate(iter(lambda: f.readline(max_record_bytes + 2), b""), start=1):
            where = f"{path} line {number}"
            if len(raw.removesuffix(b"\n").removesuffix(b"\r")) > max_record_bytes:
                raise RecordError(
                    f"{where}: longer than max_record_bytes={max_record_bytes} "
                    "(one JSON object per line; raise the task option for longer records)"
                )
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise RecordError(f"{where}: not UTF-8 ({err.reason} at byte {err.start})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise RecordError(f"{where}: not valid JSON: {err.msg} (column {err.colno})") from None
            if not isinstance(record, dict):
                raise RecordError(f"{where}: expected a JSON object, got {type(record).__name__}")
            for name in ("input", "gold"):
                if name not in record:
                    raise RecordError(f"{where}: missing field {name!r} (fields: {sorted(record)})")
                if not isinstance(record[name], str):
                    raise RecordError(f"{where}: field {name!r} must be a string, got {type(record[name]).__name__}")
            if not record["input"].strip():
                raise RecordError(f"{where}: field 'input' is empty")
            meta = {k: v for k, v in record.items() if k not in ("input", "gold")}
            examples.append((number, Example(input=record["input"], gold=record["gold"], meta=meta)))
    if not examples:
        raise RecordError(f"{path}: no records (an empty dataset)")
    return examples


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


@register_task("records")
class Records(Task):
    def __init__(
        self,
        path: str,
        context: str = "",
        teacher_template: str = "{context}\nInput: {input}\nAnswer:",
        student_template: str = "Input: {input}\nAnswer:",
        answer_marker: str | None = None,
        demonstrations_path: str | None = None,
        demonstrations_per_prompt: int | None = None,
        demonstration_template: str = "Input: {input}\nAnswer: {gold}\n",
        held_out_per_mille: int | None = None,
        match: str = "exact",
        max_record_bytes: int = MAX_RECORD_BYTES,
    ):
        if held_out_per_mille is not None:
            # a small file keeps more of itself for evaluation
            self.held_out_per_mille = held_out_option(held_out_per_mille)
        if match not in ("exact", "words"):
            raise RecordError(f"match: must be 'exact' or 'words', got {match!r}")
        self.match = match
        if not isinstance(max_record_bytes, int) or isinstance(max_record_bytes, bool) or max_record_bytes < 1:
            raise RecordError(f"max_record_bytes: must be a positive integer, got {max_record_bytes!r}")
        lines = load_records(path, max_record_bytes)
        self.examples = [x for _, x in lines]
        self.context, self.answer_marker = context, answer_marker
        self.teacher_reasons_first = bool(answer_marker)
        self.teacher_template, self.student_template = teacher_template, student_template
        # In-context examples for {demonstrations}: each prompt variant shows its own
        # k-of-n subset, in its own order (an ensemble teacher beyond the window, H5).
        shown = load_records(demonstrations_path, max_record_bytes) if demonstrations_path else []
        self.demonstrations = [x for _, x in shown]
        self.per_prompt = demonstrations_per_prompt or len(self.demonstrations)
        if self.demonstrations and not 1 <= self.per_prompt <= len(self.demonstrations):
            raise RecordError(
                f"demonstrations_per_prompt: must be in [1, {len(self.demonstrations)}] (the demonstrations), "
                f"got {demonstrations_per_prompt}"
            )
        self.demonstration_template = demonstration_template
        used: set[str] = set()
        for name, template in (("teacher_template", teacher_template), ("student_template", student_template)):
            try:
                names = _placeholders(template)
            except ValueError as err:
                raise RecordError(f"{name}: {err}") from None
            if "input" not in names:
                raise RecordError(f"{name}: must contain {{input}}")
            used |= names - {"input", "context", "demonstrations"}
            if "demonstrations" in names and not self.demonstrations:
                raise RecordError(f"{name}: uses {{demonstrations}} but no demonstrations_path is given")
        # The examples go through the templates too (a student trained on them, `inputs: demonstrations`).
        for source, records in ((path, lines), (demonstrations_path, shown)):
            for number, x in records:
                if used - x.meta.keys():
                    raise RecordError(
                        f"{source} line {number}: missing field(s) {sorted(used - x.meta.keys())} that a template uses"
                    )

    def sample_inputs(self, n: int, rng: random.Random) -> list[Example]:
        return [self.examples[rng.randrange(len(self.examples))] for _ in range(n)]

    def _fill(self, template: str, x: Example, variant: int | None) -> str:
        """`variant`: which random subset of demonstrations the prompt shows; None: the first
        ones in file order, the same for every input (the student's fixed examples, H5)."""
        if variant is None:
            shown = self.demonstrations[: self.per_prompt]
        else:
            shown = random.Random(f"{x.input}\0{variant}").sample(self.demonstrations, self.per_prompt)
        demonstrations = "".join(
            self.demonstration_template.format(input=d.input, gold=d.gold, **d.meta) for d in shown
        )
        values: dict[str, Any] = {**x.meta, "input": x.input, "context": self.context, "demonstrations": demonstrations}
        return template.format(**values)

    def teacher_prompt(self, x: Example) -> str:
        return self._fill(self.teacher_template, x, 0)

    def teacher_prompt_variant(self, x: Example, variant: int) -> str:
        if "demonstrations" not in _placeholders(self.teacher_template):
            return super().teacher_prompt_variant(x, variant)
        return self._fill(self.teacher_template, x, variant)

    def student_prompt(self, x: Example) -> str:
        return self._fill(self.student_template, x, None)

    def gold_completion(self, x: Example) -> str | None:
        # As the worked examples write it ("Answer: Paris"): after a prompt that ends in
        # neither a space nor a newline, the answer's first token carries its space, as a
        # model's own answer does.
        if x.gold is None or self.student_template.endswith((" ", "\n")):
            return x.gold
        return " " + x.gold

    def demonstration_examples(self) -> list[Example]:
        if not self.demonstrations:
            return super().demonstration_examples()
        return self.demonstrations

    def answer_span(self, completion: str) -> tuple[int, int] | None:
        start = 0
        if self.answer_marker:
            at = completion.rfind(self.answer_marker)
            start = 0 if at < 0 else at + len(self.answer_marker)
        # The first line with text from `start`, without its surrounding whitespace.
        while start < len(completion):
            end = completion.find("\n", start)
            end = len(completion) if end < 0 else end
            line = completion[start:end]
            if line.strip():
                left = start + len(line) - len(line.lstrip())
                return left, start + len(line.rstrip())
            start = end + 1
        return None

    def answer_survives_cut(self, completion: str, span: tuple[int, int]) -> bool:
        # The answer is one line, so text after it means the line ended before the cut (a
        # few-shot prompt's model writes the next question). With an answer_marker, a cut
        # before the marker leaves the first line of the reasoning as the span: not whole.
        return not self.answer_marker and bool(completion[span[1] :].strip())

    def score(self, x: Example, answer: str | None) -> float:
        return 0.0 if answer is None else float(gold_matches(answer, x.gold, self.match))


def gold_matches(answer: str, gold: str, match: str) -> bool:
    """`exact`: equal once runs of whitespace are collapsed; `words`: the gold's words, in order,
    somewhere in the answer, ignoring case and punctuation ("The capital of India is New Delhi."
    holds "new delhi"); `contains`: the gold as a substring, ignoring case and runs of whitespace."""
    if match == "words":
        said, wanted = _words(answer), _words(gold)
        return bool(wanted) and any(said[i : i + len(wanted)] == wanted for i in range(len(said) - len(wanted) + 1))
    if match == "contains":
        return " ".join(gold.split()).lower() in " ".join(answer.split()).lower()
    return " ".join(answer.split()) == " ".join(gold.split())


def _words(text: str) -> list[str]:
    return re.findall(r"\w+(?:'\w+)*", text.lower().replace("’", "'"))  # "'cold'." -> cold; "N’Djamena" = "N'Djamena"
