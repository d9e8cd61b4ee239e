"""Step 6 of a round: score the teacher (with its context) and the student (without) on
held-out inputs, greedily, through the running engines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cdscale.targets import FlatTopk
from cdscale.tasks import Example, Task

if TYPE_CHECKING:
    from cdscale.teacher.group import EngineGroup


def eval_prompts(tokenizer: Any, task: Task, examples: list[Example], role: str) -> list[list[int]]:
    """The token ids of each example's prompt for `role` ("teacher": T_teacher, "student": T_student)."""
    build_prompt = task.teacher_prompt if role == "teacher" else task.student_prompt
    return [tokenizer(build_prompt(x))["input_ids"] for x in examples]


def score_outputs(
    task: Task, tokenizer: Any, examples: list[Example], prompts: list[list[int]], outputs: list[dict[str, Any] | None]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The metrics and one row per example of the engines' `outputs`, None where the prompt
    was too long to send.

    A skipped example scores 0 and fails every rule (it is in `n`, so rates are over the whole
    eval set), and is counted in "too_long"; its row has completion and answer None and
    `skipped: "too_long"`. "accuracy" is over the examples with a gold answer (None when none
    has one); "rules" is each of the task's checks' compliance rate. Token averages are over
    all `n`: a skipped example adds its prompt and no generated tokens.
    """
    rows, correct, with_gold, extracted, too_long, prompt_tokens, generated_tokens = [], 0.0, 0, 0, 0, 0, 0
    passed = {check.name: 0 for check in task.checks}
    for x, prompt, out in zip(examples, prompts, outputs):
        prompt_tokens += len(prompt)
        with_gold += x.gold is not None
        row: dict[str, Any] = {"input": x.input, "gold": x.gold, "completion": None, "answer": None, "score": 0.0}
        if out is None:
            too_long += 1
            rows.append({**row, "skipped": "too_long"})
            continue
        completion = tokenizer.decode(out["token_ids"], skip_special_tokens=True)
        answer = task.extract_answer(completion)
        score = task.score(x, answer)
        correct += score or 0.0
        extracted += answer is not None
        generated_tokens += len(out["token_ids"])
        row.update(completion=completion, answer=answer, score=score)
        if task.checks:
            row["rules"] = {check.name: check.passes(completion) for check in task.checks}
            for name, ok in row["rules"].items():
                passed[name] += ok
        rows.append(row)
    n = len(examples)
    metrics = {
        "accuracy": correct / with_gold if with_gold else None,
        "extracted": extracted / n,
        "prompt_tokens": prompt_tokens / n,
        "generated_tokens": generated_tokens / n,
        "tokens_per_answer": (prompt_tokens + generated_tokens) / n,
        "too_long": too_long,
        "n": n,
    }
    if task.checks:
        metrics["rules"] = {name: count / n for name, count in passed.items()}
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


# Evaluation without gold: how far the student's token distribution is from a reference's
# on the reference's own held-out responses. The context gap's reference is the teacher (the
# model with the context): KL(teacher || student) without the context, before and after
# distillation. Drift's is the model before distillation, without any context: KL(before ||
# after) on prompts unrelated to the context, what else the distillation changed.
#
# Both are Monte Carlo estimates from vLLM's logprobs of the sampled tokens: for y drawn from
# the reference p (temperature 1), E[log p(y) - log q(y)] is the KL between the response
# distributions. Summed over the responses and divided by their token count, it is a per-token
# KL; the exact per-position KL would need every token's probability, which the engines return
# only for their top-k.


def sample_reference(
    engines: EngineGroup, prompts: list[list[int]], max_new_tokens: int, desc: str
) -> list[dict[str, list] | None]:
    """One temperature-1 response per prompt and its logprob of each of its tokens (through the
    stop token): {"token_ids", "logprobs"}, None where the prompt is too long to send."""
    outputs = engines.generate_fitting(prompts, {"temperature": 1.0, "max_tokens": max_new_tokens, "logprobs": 0}, desc)
    references: list[dict[str, list] | None] = []
    for out in outputs:
        if out is None or not out["token_ids"]:
            references.append(None)
            continue
        rows = FlatTopk(out)
        references.append(
            {"token_ids": out["token_ids"], "logprobs": [rows[j][t] for j, t in enumerate(out["token_ids"])]}
        )
    return references


def score_responses(
    engines: EngineGroup, prompts: list[list[int]], responses: list[list[int] | None], desc: str
) -> list[list[float] | None]:
    """The engines' logprob of each token of `responses[i]` after `prompts[i]` (None where no
    response, or where prompt and response do not fit the engines' context)."""
    jobs = [i for i, response in enumerate(responses) if response]
    outputs = engines.generate_fitting(
        [prompts[i] + responses[i] for i in jobs], {"temperature": 0.0, "max_tokens": 1, "prompt_logprobs": 0}, desc
    )
    scored: list[list[float] | None] = [None] * len(responses)
    for i, out in zip(jobs, outputs):
        if out is not None:
            rows = FlatTopk(out, prefix="prompt_")  # row p: the logprob of prompt token p given the ones before it
            scored[i] = [rows[len(prompts[i]) + j][t] for j, t in enumerate(responses[i])]
    return scored


def kl_per_token(reference: list[list[float] | None], scored: list[list[float] | None]) -> float | None:
    """sum(log p(y) - log q(y)) / tokens over the responses both sides have; None if there are none."""
    pairs = [(p, q) for p, q in zip(reference, scored) if p is not None and q is not None]
    tokens = sum(len(p) for p, _ in pairs)
    return sum(a - b for p, q in pairs for a, b in zip(p, q)) / tokens if tokens else None
