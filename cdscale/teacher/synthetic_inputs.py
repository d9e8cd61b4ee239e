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


def synthesize_inputs(
    engines: EngineGroup,
    tokenizer: Any,
    task: Task,
    op: OperationConfig,
    rng: random.Random,
    desc: str,
    stop: Callable[[], bool] | None = None,
) -> tuple[list[Example], dict[str, int]]:
    """Up to op.num_train distinct new inputs in at most `op.synthetic_max_passes` generations.
    Each asks for what is still missing, scaled by the share of candidates kept so far (a
    quarter more at first). Returns them and the counts."""
    shots, n = op.synthetic_shots, op.num_train
    sampling = {"temperature": op.synthetic_temperature, "max_tokens": op.synthetic_max_new_tokens}
    pool = sample_where(task, 16 * shots, rng, held_out=False, what=f"{desc} shots")
    examples: list[Example] = []
    seen: set[str] = set()
    counts: Counter = Counter()
    for _ in range(op.synthetic_max_passes):
        need = n - len(examples)
        if need <= 0:
            break
        asked = counts["generated"]
        kept_share = max(len(examples) / asked, 0.05) if asked else 0.8
        prompts = [
            tokenizer(task.input_generation_prompt(rng.sample(pool, shots)))["input_ids"]
            for _ in range(math.ceil(1.1 * need / kept_share))
        ]
        outputs = engines.generate(prompts, [sampling] * len(prompts), desc, stop)
        lines = [
            first_line(tokenizer.decode(o["token_ids"], skip_special_tokens=True), o["finish_reason"] == "stop")
            for o in outputs
        ]
        kept, pass_counts = keep_inputs(task, lines, seen)
        examples += kept
        counts.update(pass_counts)
    counts["kept"] = min(n, len(examples))
    counts["unused"] = len(examples) - counts["kept"]
    return examples[:n], dict(counts)
