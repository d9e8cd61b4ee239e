"""Bake a context into a chat model: a dataset of user turns as inputs, the whole assistant
response as the target, and no gold label needed.

    task:
      name: chat
      options:
        dataset: {path: configs/data/questions.parquet, split: train}
        columns: {prompt: question}      # or {messages: conversation}; optional gold, context
        context: "Always reply in French."
        placement: system                # system | user_prefix | user_suffix | turns
        checks: [{name: french, language: fr}]

The teacher's prompt is the conversation with the context, the student's the same
conversation without it, both rendered by the tokenizer's own chat template with the
generation prompt (`add_generation_prompt=True`). Where the context goes:
- `system` (default): the system turn; merged before an existing system turn's text. Without
  one, the student's prompt is the template's own default (SmolLM2's names itself "SmolLM"):
  what the model says when deployed without the context.
- `user_prefix` / `user_suffix`: before / after the text of the last user turn, the one answered.
- `turns`: demonstrations (`demonstrations: {dataset, columns}` with a gold column: the
  assistant's reply) as earlier user/assistant turns; the teacher shows a k-of-n subset per
  input (`demonstrations_per_prompt`), each prompt variant of an ensemble teacher its own.
A per-row `context` column replaces `context` for its row.

f is the whole response: the target runs through the model's end-of-turn token, so the
student learns when to stop. A response cut by teacher.max_new_tokens is skipped
(`keep_truncated: true` keeps it, without a stop token). The context is never cut: a teacher
prompt longer than the engines' context is skipped and counted, and a context that alone
does not fit stops the run before it starts.

Evaluation needs no gold: `checks` (rules, `cdscale/tasks/checks.py`) are scored on every
greedy response as compliance rates, and the context gap and drift (`drift: {dataset,
columns}`, prompts answered without any context) are KLs measured in `cdscale/eval.py`. With a
gold column, `match` scores the response: `exact`, `words` (the gold's words in order), or
`contains` (the gold as a substring).
"""

from __future__ import annotations

import random
from typing import Any

from cdscale.config import ConfigError
from cdscale.tasks import Example, Task, held_out_option, register_task
from cdscale.tasks.chat_data import ChatRow, load_chat_rows
from cdscale.tasks.checks import Check, parse_checks
from cdscale.tasks.records import gold_matches

PLACEMENTS = ("system", "user_prefix", "user_suffix", "turns")
MATCHES = ("exact", "words", "contains")
SEPARATOR = "\n\n"  # between the context and the text it joins


@register_task("chat")
class Chat(Task):
    open_ended = True

    def __init__(
        self,
        dataset: dict | str,
        columns: dict | None = None,
        context: str = "",
        placement: str = "system",
        demonstrations: dict | None = None,
        demonstrations_per_prompt: int | None = None,
        chat_template: str | None = None,
        chat_template_kwargs: dict | None = None,
        checks: list | None = None,
        drift: dict | None = None,
        match: str = "exact",
        keep_truncated: bool = False,
        held_out_per_mille: int | None = None,
    ):
        if isinstance(dataset, str):
            dataset = {"path": dataset}
        if placement not in PLACEMENTS:
            raise ValueError(f"placement: {placement!r} is not one of {list(PLACEMENTS)}")
        if match not in MATCHES:
            raise ValueError(f"match: {match!r} is not one of {list(MATCHES)}")
        if not isinstance(context, str):
            raise ValueError(f"context: must be a string, got {type(context).__name__}")
        if not isinstance(keep_truncated, bool):
            raise ValueError(f"keep_truncated: must be true or false, got {keep_truncated!r}")
        if held_out_per_mille is not None:
            self.held_out_per_mille = held_out_option(held_out_per_mille)
        self.placement, self.match, self.keep_truncated = placement, match, keep_truncated
        self.context = context
        self.chat_template = chat_template
        self.template_kwargs = dict(chat_template_kwargs or {})
        self.checks: list[Check] = parse_checks([] if checks is None else checks, "checks")
        self.examples = [_example(row) for row in load_chat_rows(dataset, columns)]
        if placement != "turns" and not context and not any(x.meta["context"] for x in self.examples):
            raise ValueError("context: empty, and no row has a context column value: nothing to distil")
        self.demonstrations: list[Example] = []
        if demonstrations is not None:
            rows = _load_part("demonstrations", demonstrations)
            missing = [row.row for row in rows if row.gold is None]
            if missing:
                raise ValueError(
                    f"demonstrations: rows {missing[:5]} have no gold column value (the assistant's reply)"
                )
            self.demonstrations = [_example(row) for row in rows]
        if (placement == "turns") != bool(self.demonstrations):
            raise ValueError("demonstrations: given exactly when placement is 'turns'")
        self.per_prompt = demonstrations_per_prompt or len(self.demonstrations)
        if self.demonstrations and not 1 <= self.per_prompt <= len(self.demonstrations):
            raise ValueError(
                f"demonstrations_per_prompt: must be in [1, {len(self.demonstrations)}], "
                f"got {demonstrations_per_prompt}"
            )
        self.drift_examples = [_example(row) for row in _load_part("drift", drift)] if drift is not None else []
        self.tokenizer: Any = None

    def use_tokenizer(self, tokenizer: Any, max_model_len: int) -> None:
        """Render with this model's chat template; fail now if it has none or the context alone
        does not fit in the engines' context."""
        if not (self.chat_template or getattr(tokenizer, "chat_template", None)):
            raise ConfigError(
                "task.options.chat_template: the model's tokenizer has no chat template; give one (a Jinja "
                "template string, as in a tokenizer_config.json) in task.options.chat_template"
            )
        self.tokenizer = tokenizer
        contexts = {self.context} | {x.meta["context"] for x in self.examples if x.meta["context"]}
        for context in contexts:
            length = len(tokenizer(context, add_special_tokens=False)["input_ids"])
            if length >= max_model_len:
                raise ConfigError(
                    f"task.options.context: {length} tokens alone, and teacher.max_model_len is {max_model_len}; "
                    "the context is never cut: raise teacher.max_model_len or shorten the context"
                )

    def sample_inputs(self, n: int, rng: random.Random) -> list[Example]:
        return [self.examples[rng.randrange(len(self.examples))] for _ in range(n)]

    def conversation(self, x: Example, variant: int | None) -> list[dict[str, str]]:
        """The turns of the teacher's prompt (`variant`: which demonstrations it shows), or of
        the student's (None: without the context)."""
        turns = [{"role": role, "content": content} for role, content in _turns(x)]
        context = x.meta["context"] or self.context
        if variant is None:
            return turns
        if self.placement == "system":
            if turns[0]["role"] == "system":
                turns[0] = {"role": "system", "content": context + SEPARATOR + turns[0]["content"]}
            else:
                turns.insert(0, {"role": "system", "content": context})
        elif self.placement in ("user_prefix", "user_suffix"):
            last = turns[-1]["content"]
            joined = context + SEPARATOR + last if self.placement == "user_prefix" else last + SEPARATOR + context
            turns[-1] = {"role": "user", "content": joined}
        else:
            shown = random.Random(f"{x.input}\0{variant}").sample(self.demonstrations, self.per_prompt)
            pairs = [t for d in shown for t in (*_turns(d), ("assistant", d.gold))]
            start = 1 if turns[0]["role"] == "system" else 0
            turns[start:start] = [{"role": role, "content": content} for role, content in pairs]
        return turns

    def render(self, turns: list[dict[str, str]]) -> str:
        if self.tokenizer is None:
            raise RuntimeError("chat task: use_tokenizer() was not called before rendering a prompt")
        text = self.tokenizer.apply_chat_template(
            turns, chat_template=self.chat_template, tokenize=False, add_generation_prompt=True, **self.template_kwargs
        )
        # Prompts are tokenized with the tokenizer's special tokens: a template that writes the
        # BOS itself would get a second one.
        bos = self.tokenizer.bos_token
        if bos and text.startswith(bos) and self.tokenizer("")["input_ids"][:1] == [self.tokenizer.bos_token_id]:
            text = text[len(bos) :]
        return text

    def teacher_prompt(self, x: Example) -> str:
        return self.render(self.conversation(x, 0))

    def teacher_prompt_variant(self, x: Example, variant: int) -> str:
        if self.placement != "turns":
            return super().teacher_prompt_variant(x, variant)
        return self.render(self.conversation(x, variant))

    def student_prompt(self, x: Example) -> str:
        return self.render(self.conversation(x, None))

    def demonstration_examples(self) -> list[Example]:
        if not self.demonstrations:
            return super().demonstration_examples()
        return self.demonstrations

    def parse_input(self, line: str) -> Example | str:
        line = line.strip()
        return _example(ChatRow(row=-1, messages=(("user", line),))) if line else "empty"

    def answer_span(self, completion: str) -> tuple[int, int] | None:
        end = len(completion.rstrip())
        return (0, end) if completion[:end].strip() else None

    def answer_survives_cut(self, completion: str, span: tuple[int, int]) -> bool:
        return self.keep_truncated

    def score(self, x: Example, answer: str | None) -> float | None:
        """The gold match of a response; None where the input has no gold (rules score it instead)."""
        if x.gold is None:
            return None
        return 0.0 if answer is None else float(gold_matches(answer, x.gold, self.match))


def _load_part(name: str, part: Any) -> list[ChatRow]:
    """The rows of a second dataset of the task (`demonstrations`, `drift`): {dataset, columns}."""
    if not isinstance(part, dict) or "dataset" not in part or set(part) - {"dataset", "columns"}:
        raise ValueError(f"{name}: expected {{dataset: ..., columns: {{...}}}}, got {part!r}")
    where = part["dataset"]
    return load_chat_rows(where if isinstance(where, dict) else {"path": where}, part.get("columns"))


def _example(row: ChatRow) -> Example:
    # A single user turn is its own input text; a longer conversation is keyed by all its turns
    # (the held-out partition hashes the input).
    single = len(row.messages) == 1
    key = row.messages[0][1] if single else "\n".join(f"{role}: {content}" for role, content in row.messages)
    return Example(input=key, gold=row.gold, meta={"row": row.row, "messages": row.messages, "context": row.context})


def _turns(x: Example) -> tuple[tuple[str, str], ...]:
    return x.meta.get("messages") or (("user", x.input),)
