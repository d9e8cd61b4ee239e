"""Step 3 of a round: turn teacher generations into student training records.

The student is trained on the teacher's own answer tokens, so both sides score the same
token ids: student ids = tokenize(T_student(x)) + the generated tokens that cover f(y).
When f's span starts or ends inside a token, the whole token is kept. When only
whitespace follows the answer and the teacher stopped with a stop token, that token is kept
too, so the student learns to stop after answering.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence


class FlatTopk:
    """Per-position {token id: logprob} views over an engine's flat logprob lists (those of
    the generated positions, or with prefix="prompt_" those of the prompt's)."""

    def __init__(self, output: dict, prefix: str = ""):
        self.ids, self.values = output[f"{prefix}logprob_ids"], output[f"{prefix}logprob_values"]
        self.starts = output[f"{prefix}logprob_starts"]

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, j: int) -> dict[int, float]:
        a, b = self.starts[j], self.starts[j + 1]
        return dict(zip(self.ids[a:b], self.values[a:b]))


def average_topk(rows: "Sequence[dict[int, float]]") -> dict[int, float]:
    """The ensemble teacher's distribution at one position (paper H5, App. B.5): the mean of
    K prompts' probabilities, as {token id: logprob}. A token outside one prompt's top-k
    counts as 0 there, so its true mean is at least the value given, and the mass missing
    from the top-k lands in the tail bucket of the loss."""
    total: dict[int, float] = {}
    for row in rows:
        for token, logprob in row.items():
            total[token] = total.get(token, 0.0) + math.exp(logprob)
    return {token: math.log(p / len(rows)) for token, p in total.items() if p > 0}


def flatten_topk(rows: "Sequence[dict[int, float]]") -> dict[str, list]:
    """Per-position {token id: logprob} dicts back into an engine output's flat fields."""
    ids, values, starts = [], [], []
    for row in rows:
        starts.append(len(ids))
        ids += list(row)
        values += list(row.values())
    return {"logprob_ids": ids, "logprob_values": values, "logprob_starts": starts + [len(ids)]}


@dataclass
class StudentRecord:
    """One distillation example: the student's ids and the teacher's signal at the answer."""

    input_ids: list[int]
    answer_start: int  # index in input_ids of the first answer token
    topk_ids: list[list[int]]  # per answer token, the teacher's top-k next-token ids
    topk_logprobs: list[list[float]]

    @property
    def answer_ids(self) -> list[int]:
        return self.input_ids[self.answer_start :]


def answer_token_range(
    gen_ids: list[int], span: tuple[int, int], decode: Callable[[list[int]], str]
) -> tuple[int, int]:
    """The [first, last) generated tokens that cover the character span of decode(gen_ids)."""
    start, end = span
    if not 0 <= start < end:
        raise ValueError(f"empty or negative answer span {span}")
    lengths = _PrefixLengths(gen_ids, decode)
    first = bisect.bisect_right(lengths, start)  # first token whose text reaches past `start`
    last = bisect.bisect_left(lengths, end) + 1  # token that completes `end`
    if last > len(gen_ids):
        raise ValueError(f"answer span {span} runs past the generation ({len(lengths.text)} chars)")
    return first, last


class _PrefixLengths:
    """Lazy sequence: item i = len(decode(gen_ids[: i + 1])), for bisect (O(log n) decodes)."""

    def __init__(self, gen_ids: list[int], decode: Callable[[list[int]], str]):
        self.gen_ids, self.decode = gen_ids, decode
        self.text = decode(gen_ids)

    def __len__(self) -> int:
        return len(self.gen_ids)

    def __getitem__(self, i: int) -> int:
        return len(self.decode(self.gen_ids[: i + 1]))


def stop_token_ids(tokenizer: Any) -> frozenset[int]:
    """The token ids an engine stops at: the tokenizer's EOS and every `eos_token_id` of the
    model folder's generation_config.json, as vLLM takes them. Chat models list several
    (Llama 3 Instruct: <|end_of_text|>, <|eom_id|>, <|eot_id|>); a response may end with any."""
    ids = {tokenizer.eos_token_id} - {None}
    config = Path(tokenizer.name_or_path) / "generation_config.json"
    if config.is_file():
        listed = json.loads(config.read_text()).get("eos_token_id")
        ids |= {listed} if isinstance(listed, int) else set(listed or ())
    return frozenset(ids)


def build_student_record(
    student_prompt_ids: list[int],
    gen_ids: list[int],
    gen_topk: "Sequence[dict[int, float]]",
    span: tuple[int, int],
    decode: Callable[[list[int]], str],
    stop_ids: Collection[int],
    top_k: int,
) -> StudentRecord:
    """Align the teacher's answer tokens (and their top-k logprobs) to the student's prompt.

    gen_topk[j] maps token id -> logprob for generated position j (vLLM returns the
    top-k plus the sampled token). Rows are padded to top_k + 1 entries with -inf.
    `stop_ids`: the tokens the generation may have stopped with (`stop_token_ids`).
    """
    first, last = answer_token_range(gen_ids, span, decode)
    text = decode(gen_ids)
    if gen_ids and gen_ids[-1] in stop_ids and not text[span[1] :].strip():
        last = len(gen_ids)  # keep the whitespace tokens and the stop token after the answer
    width = top_k + 1
    ids_rows, lp_rows = [], []
    for j in range(first, last):
        items = sorted(gen_topk[j].items(), key=lambda kv: -kv[1])[:width]
        if gen_ids[j] not in dict(items):
            items[-1] = (gen_ids[j], gen_topk[j][gen_ids[j]])  # the sampled token always counts
        ids_rows.append([t for t, _ in items] + [0] * (width - len(items)))
        lp_rows.append([float(lp) for _, lp in items] + [float("-inf")] * (width - len(items)))
    return StudentRecord(
        input_ids=list(student_prompt_ids) + list(gen_ids[first:last]),
        answer_start=len(student_prompt_ids),
        topk_ids=ids_rows,
        topk_logprobs=lp_rows,
    )


def gold_record(prompt_ids: list[int], target_ids: list[int], eos_token_id: int | None) -> StudentRecord:
    """A supervised example in the distillation format: the target tokens (then EOS) as
    one-hot teacher rows, so forward KL on it is the negative log-likelihood of the target.
    Lets gold-label baselines and replay data share a batch with distillation records.

    Each row holds the one target token, not top_k + 1 padded entries: `collate` pads a
    batch's rows to its widest. Padded rows held 65,536 gold scratchpads of 1-8 digit
    addition in about 6.7 GB per trainer rank (and as much in the driver), which a 24 GB
    machine could not hold (2026-12-05)."""
    answer = list(target_ids) + ([eos_token_id] if eos_token_id is not None else [])
    return StudentRecord(
        input_ids=list(prompt_ids) + answer,
        answer_start=len(prompt_ids),
        topk_ids=[[t] for t in answer],
        topk_logprobs=[[0.0] for _ in answer],
    )
