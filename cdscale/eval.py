"""Step 6 of a round: score the teacher (with its context) and the student (without) on
held-out inputs, greedily, through the running engines."""
from __future__ import annotations

from typing import Any, Callable

from cdscale.tasks import Example, Task
from cdscale.teacher.engine import generate_across


def evaluate(
    engines: list[Any],
    tokenizer: Any,
    task: Task,
    examples: list[Example],
    role: str,
    max_new_tokens: int,
    chunk_size: int,
    timeout_s: float,
    replace: Callable[[list[Any], Any, int], Any] | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Greedy accuracy of `role` ("teacher": T_teacher prompts, "student": T_student prompts).

    Returns the metrics and one row per example (prompt, completion, answer, score), so a
    run directory shows what the model actually said.
    """
    build_prompt = task.teacher_prompt if role == "teacher" else task.student_prompt
    prompts = [tokenizer(build_prompt(x))["input_ids"] for x in examples]
    greedy = {"temperature": 0.0, "max_tokens": max_new_tokens}
    outputs = generate_across(engines, prompts, [greedy] * len(prompts), chunk_size, timeout_s, f"eval {role}", replace=replace)
    rows, correct, extracted, prompt_tokens, generated_tokens = [], 0.0, 0, 0, 0
    for x, prompt, out in zip(examples, prompts, outputs):
        completion = tokenizer.decode(out["token_ids"], skip_special_tokens=True)
        answer = task.extract_answer(completion)
        score = task.score(x, answer)
        correct += score
        extracted += answer is not None
        prompt_tokens += len(prompt)
        generated_tokens += len(out["token_ids"])
        rows.append({"input": x.input, "gold": x.gold, "completion": completion, "answer": answer, "score": score})
    n = len(examples)
    metrics = {
        "accuracy": correct / n,
        "extracted": extracted / n,
        "prompt_tokens": prompt_tokens / n,
        "generated_tokens": generated_tokens / n,
        "tokens_per_answer": (prompt_tokens + generated_tokens) / n,
        "n": n,
    }
    return metrics, rows
