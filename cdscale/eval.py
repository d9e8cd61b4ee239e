"""Step 6 of a round: score the teacher (with its context) and the student (without) on
held-out inputs, greedily, through the running engines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cdscale.tasks import Example, Task

if TYPE_CHECKING:
    from cdscale.teacher.group import EngineGroup


def eval_prompts(tokenizer: Any, task: Task, examples: list[Example], role: str) -> list[list[int]]:
    """The token ids of each example's prompt for `role` ("teacher": T_teacher, "student": T_student)."""
    build_prompt = task.teacher_prompt if role == "teacher" else task.student_prompt
    return [tokenizer(build_prompt(x))["input_ids"] for x in examples]


def score_outputs(
    task: Task, tokenizer: Any, examples: list[Example], prompts: list[list[int]], outputs: list[dict[str, Any] | None]
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The metrics and one row per example of the engines' `outputs`, None where the prompt
    was too long to send.

    A skipped example scores 0 (it is in `n`, so accuracy is over the whole eval set), and is
    counted in "too_long"; its row has completion and answer None and `skipped: "too_long"`.
    Token averages are over all `n`: a skipped example adds its prompt and no generated tokens.
    """
    rows, correct, extracted, too_long, prompt_tokens, generated_tokens = [], 0.0, 0, 0, 0, 0
    for x, prompt, out in zip(examples, prompts, outputs):
        prompt_tokens += len(prompt)
        if out is None:
            too_long += 1
            rows.append(
                {
                    "input": x.input,
                    "gold": x.gold,
                    "completion": None,
                    "answer": None,
                    "score": 0.0,
                    "skipped": "too_long",
                }
            )
            continue
        completion = tokenizer.decode(out["token_ids"], skip_special_tokens=True)
        answer = task.extract_answer(completion)
        score = task.score(x, answer)
        correct += score
        extracted += answer is not None
        generated_tokens += len(out["token_ids"])
        rows.append({"input": x.input, "gold": x.gold, "completion": completion, "answer": answer, "score": score})
    n = len(examples)
    metrics = {
        "accuracy": correct / n,
        "extracted": extracted / n,
        "prompt_tokens": prompt_tokens / n,
        "generated_tokens": generated_tokens / n,
        "tokens_per_answer": (prompt_tokens + generated_tokens) / n,
        "too_long": too_long,
        "n": n,
    }
    return metrics, rows


def evaluate(
    engines: EngineGroup,
    tokenizer: Any,
    sets: dict[str, tuple[Task, list[Example]]],
    role: str,
    max_new_tokens: int,
) -> dict[str, tuple[dict[str, float], list[dict[str, Any]]]]:
    """Greedy accuracy of `role` ("teacher": T_teacher prompts, "student": T_student prompts)
    on each operation's held-out `sets[op] = (task, examples)`.

    Every operation's prompts go to the engines in one call, so they decode together: a call
    per operation would decode them one after the other. Prompts as long as the engines'
    context or longer are not sent, as in target generation (`EngineGroup.generate_fitting`);
    they score 0 and are counted in the metric "too_long". Returns, per operation, the
    metrics and one row per example (`score_outputs`), so a run directory shows what the
    model actually said.
    """
    prompts = {op: eval_prompts(tokenizer, task, examples, role) for op, (task, examples) in sets.items()}
    outputs = engines.generate_fitting(
        [p for op_prompts in prompts.values() for p in op_prompts],
        {"temperature": 0.0, "max_tokens": max_new_tokens},
        f"eval {role}",
    )
    results, start = {}, 0
    for op, (task, examples) in sets.items():
        end = start + len(examples)
        results[op] = score_outputs(task, tokenizer, examples, prompts[op], outputs[start:end])
        start = end
    return results
