"""Evaluation skips prompts that leave no room to generate in the engines' context, as target
generation does: they are not sent, score 0 and are counted as too long."""

import random

import pytest

from cdscale.eval import eval_prompts, score_outputs
from cdscale.tasks import Example, build_task
from cdscale.teacher.group import fitting


@pytest.fixture
def task():
    return build_task("addition", {"min_digits": 1, "max_digits": 2})


def _examples(task) -> list[Example]:
    """Two short sums and one of two-digit operands, whose prompt is the longest."""
    by_length = sorted(task.sample_inputs(50, random.Random(0)), key=lambda x: len(x.input))
    return [by_length[0], by_length[-1], by_length[1]]


def _output(tokenizer, text: str, finish_reason: str = "stop") -> dict:
    """An engine's output that says `text`."""
    return {"token_ids": tokenizer(text, add_special_tokens=False)["input_ids"], "finish_reason": finish_reason}


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_prompts_at_or_over_the_context_are_not_sent(tiny_tokenizer, task, role):
    examples = _examples(task)
    prompts = eval_prompts(tiny_tokenizer, task, examples, role)
    build = task.teacher_prompt if role == "teacher" else task.student_prompt
    assert prompts == [tiny_tokenizer(build(x))["input_ids"] for x in examples]
    longest = len(prompts[1])
    assert max(len(prompts[0]), len(prompts[2])) < longest
    assert fitting(prompts, max_model_len=longest) == [0, 2]  # as long as the context: no room to generate
    assert fitting(prompts, max_model_len=longest + 1) == [0, 1, 2]
    assert fitting(prompts, max_model_len=1) == []


def test_a_skipped_prompt_scores_zero_and_is_counted(tiny_tokenizer, task):
    examples = _examples(task)
    prompts = eval_prompts(tiny_tokenizer, task, examples, "teacher")
    sent = fitting(prompts, max_model_len=len(prompts[1]))
    outputs = [None] * len(examples)
    for i in sent:  # the engines answer every sent prompt correctly
        outputs[i] = _output(tiny_tokenizer, task.teacher_demonstration(examples[i]))
    metrics, rows = score_outputs(task, tiny_tokenizer, examples, prompts, outputs)
    assert metrics["too_long"] == 1 and metrics["n"] == 3
    assert metrics["accuracy"] == pytest.approx(2 / 3) and metrics["extracted"] == pytest.approx(2 / 3)
    assert metrics["prompt_tokens"] == pytest.approx(sum(map(len, prompts)) / 3)
    assert metrics["generated_tokens"] == pytest.approx(sum(len(outputs[i]["token_ids"]) for i in sent) / 3)
    assert rows[1] == {
        "input": examples[1].input,
        "gold": examples[1].gold,
        "completion": None,
        "answer": None,
        "score": 0.0,
        "skipped": "too_long",
    }
    assert [r["score"] for r in rows] == [1.0, 0.0, 1.0]
    assert all("skipped" not in rows[i] and rows[i]["answer"] == examples[i].gold for i in sent)


def test_nothing_skipped_reports_zero_too_long(tiny_tokenizer, task):
    examples = _examples(task)
    prompts = eval_prompts(tiny_tokenizer, task, examples, "student")
    outputs = [_output(tiny_tokenizer, "1 0 0 0") for _ in examples]  # a wrong answer for each: the sums are below 200
    metrics, rows = score_outputs(task, tiny_tokenizer, examples, prompts, outputs)
    assert metrics["too_long"] == 0 and metrics["accuracy"] == 0.0 and metrics["extracted"] == 1.0
    assert [r["answer"] for r in rows] == ["1 0 0 0"] * 3
