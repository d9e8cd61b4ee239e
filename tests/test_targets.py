"""Alignment of the teacher's answer tokens with the student's prompt (step 3 of a round)."""

import pytest

from cdscale.targets import answer_token_range, build_student_record, stop_token_ids
from cdscale.tasks.addition import Addition, scratchpad


def _reference_range(ids, span, decode):
    """Brute force: every token whose characters overlap the span, by a linear scan."""
    covering, pos = [], 0
    for j in range(len(ids)):
        end = len(decode(ids[: j + 1]))
        if end > span[0] and pos < span[1]:
            covering.append(j)
        pos = end
    return covering[0], covering[-1] + 1


def _fake_topk(ids, k=3, vocab=100):
    """A teacher signal where the sampled token is the top entry, plus k-1 others."""
    return [{t: -0.1, **{(t + d) % vocab: -3.0 - d for d in range(1, k)}} for t in ids]


def _check(tokenizer, completion, span, prompt, expect_eos):
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    gen = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert decode(gen) == completion
    first, last = answer_token_range(gen, span, decode)
    assert (first, last) == _reference_range(gen, span, decode)
    student_ids = tokenizer(prompt)["input_ids"]
    rec = build_student_record(
        student_ids, gen, _fake_topk(gen, vocab=len(tokenizer)), span, decode, {tokenizer.eos_token_id}, top_k=4
    )
    answer = completion[span[0] : span[1]]
    assert rec.input_ids[: rec.answer_start] == student_ids
    answer_text = decode(rec.answer_ids)
    assert answer in answer_text and answer_text.strip() == answer
    # Minimal: dropping the first or the last answer token (EOS aside) loses part of the answer.
    core = rec.answer_ids[:-1] if expect_eos else list(rec.answer_ids)
    while expect_eos and not decode(core[-1:]).strip():
        core.pop()  # whitespace kept between the answer and the EOS
    assert answer not in decode(core[1:]) and answer not in decode(core[:-1])
    assert (rec.answer_ids[-1] == tokenizer.eos_token_id) == expect_eos
    # One teacher row per answer token, the sampled token first, padded to top_k + 1.
    assert len(rec.topk_ids) == len(rec.answer_ids)
    assert [row[0] for row in rec.topk_ids] == rec.answer_ids
    assert all(len(row) == 5 for row in rec.topk_ids + rec.topk_logprobs)


def test_a_response_ending_with_any_stop_token_of_the_model_keeps_it(tiny_tokenizer, tmp_path):
    """A chat model may stop with any id of its generation_config.json's `eos_token_id`
    (Llama 3 Instruct lists three), as vLLM does: that token ends the target, so the student
    learns to stop. Before 2026-12-05 only the tokenizer's EOS was kept."""
    from transformers import AutoTokenizer

    tiny_tokenizer.save_pretrained(tmp_path)
    assert stop_token_ids(AutoTokenizer.from_pretrained(tmp_path)) == {2}  # no generation config: the EOS
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": [2, 1]}')
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    stops = stop_token_ids(tokenizer)
    assert stops == {1, 2}
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    words = tokenizer("Bonjour !", add_special_tokens=False)["input_ids"]
    for last, kept in ((1, True), (2, True), (3, False)):  # <s> listed, </s> the EOS, <unk> neither
        gen = [*words, last]
        rec = build_student_record([5], gen, _fake_topk(gen, vocab=len(tokenizer)), (0, 9), decode, stops, top_k=4)
        assert rec.answer_ids == (gen if kept else words), last


def test_tiny_tokenizer_scratchpad_answer(tiny_tokenizer):
    task = Addition(1, 3)
    completion = scratchpad(29, 57) + "\n8 6"
    _check(tiny_tokenizer, completion, task.answer_span(completion), "Input:\n2 9 + 5 7\nAnswer:\n", expect_eos=True)


def test_tiny_tokenizer_answer_followed_by_text_drops_eos(tiny_tokenizer):
    completion = scratchpad(29, 57) + "\n8 6 and more"
    _check(
        tiny_tokenizer,
        completion,
        Addition(1, 3).answer_span(completion),
        "Input:\n2 9 + 5 7\nAnswer:\n",
        expect_eos=False,
    )


@pytest.mark.parametrize(
    "completion,answer",
    [
        (
            "Let me think step by step. 40 + 2 = 42.\nThe answer is 42",
            "42",
        ),  # " 42" is one token: span starts inside it
        ("Result: bonjour tout le monde\n", "bonjour tout le monde"),
        ("Thinking... café costs 3€.\nFinal: café au lait", "café au lait"),  # multi-byte characters
        ("SELECT name FROM singer WHERE age > 30", "SELECT name FROM singer WHERE age > 30"),
    ],
)
def test_smollm2_tokenizer_boundaries(smollm2_tokenizer, completion, answer):
    start = completion.rindex(answer)
    expect_eos = not completion[start + len(answer) :].strip()
    _check(smollm2_tokenizer, completion, (start, start + len(answer)), "Question: what is it?\nAnswer:", expect_eos)


def test_span_past_the_generation_is_an_error(tiny_tokenizer):
    decode = lambda ids: tiny_tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    gen = tiny_tokenizer("8 6", add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError):
        answer_token_range(gen, (0, 10), decode)


def test_flat_topk_views_match_per_position_dicts():
    from cdscale.targets import FlatTopk

    out = {
        "logprob_ids": [5, 7, 9, 5, 2],
        "logprob_values": [-0.1, -2.0, -3.0, -0.5, -1.0],
        "logprob_starts": [0, 3, 5],
    }
    flat = FlatTopk(out)
    assert len(flat) == 2
    assert flat[0] == {5: -0.1, 7: -2.0, 9: -3.0} and flat[1] == {5: -0.5, 2: -1.0}


def test_a_gold_record_trains_the_negative_log_likelihood_of_its_target():
    """One-hot teacher rows: forward KL on the top-k + tail buckets equals the NLL of the
    target tokens and the EOS, computed independently from the full softmax."""
    import torch

    from cdscale.student.losses import distillation_loss
    from cdscale.student.trainer import collate
    from cdscale.targets import gold_record

    rec = gold_record([5, 6, 7], [8, 9], eos_token_id=2)
    assert rec.input_ids == [5, 6, 7, 8, 9, 2] and rec.answer_ids == [8, 9, 2]
    assert rec.topk_ids == [[8], [9], [2]] and rec.topk_logprobs == [[0.0]] * 3  # one entry a row
    batch = collate([rec.__dict__], pad_id=0)
    torch.manual_seed(0)
    logits = torch.randn(len(batch["target_ids"]), 12)
    loss = distillation_loss("forward_kl_topk", logits, batch["target_ids"], batch["topk_ids"], batch["topk_logprobs"])
    nll = -torch.log_softmax(logits, -1)[torch.arange(3), torch.tensor([8, 9, 2])].mean()
    assert loss.item() == pytest.approx(nll.item(), rel=1e-6)


def test_gold_and_teacher_records_in_one_batch_lose_what_each_loses_alone():
    """A gold record's one-entry rows share a batch with top-k rows: collate pads them, and
    the batch's per-token loss is the token-weighted mean of each record's own loss."""
    import math

    import torch

    from cdscale.student.losses import distillation_loss
    from cdscale.student.trainer import collate
    from cdscale.targets import gold_record

    gold = vars(gold_record([5, 6], [8, 9], eos_token_id=2))
    teacher = {
        "input_ids": [4, 7, 3],
        "answer_start": 2,
        "topk_ids": [[3, 1, 0]],
        "topk_logprobs": [[-0.2, -2.5, -math.inf]],
    }
    torch.manual_seed(0)
    logits = torch.randn(4, 12)  # the answer tokens in record order: gold's three, teacher's one

    def loss(records: list[dict], rows: torch.Tensor) -> float:
        batch = collate(records, pad_id=0)
        return distillation_loss(
            "forward_kl_topk", rows, batch["target_ids"], batch["topk_ids"], batch["topk_logprobs"]
        ).item()

    both = loss([gold, teacher], logits)
    assert collate([gold, teacher], pad_id=0)["topk_ids"].shape == (4, 3)
    assert both == pytest.approx((3 * loss([gold], logits[:3]) + loss([teacher], logits[3:])) / 4, rel=1e-6)


def test_the_ensemble_target_is_the_mean_of_the_prompts_distributions():
    """Full support: the averaged logprobs are the log of the mean of the K softmaxes. Top-k
    rows: a token outside a prompt's top-k counts 0 there, and the rest is the tail."""
    import math

    import torch

    from cdscale.targets import FlatTopk, average_topk, flatten_topk

    torch.manual_seed(0)
    logits = torch.randn(4, 7)  # K = 4 prompts, 7 tokens
    probs = torch.softmax(logits, -1)
    rows = [dict(enumerate(torch.log_softmax(row, -1).tolist())) for row in logits]
    averaged = average_topk(rows)
    assert [math.exp(averaged[t]) for t in range(7)] == pytest.approx(probs.mean(0).tolist(), rel=1e-6)

    top3 = [dict(sorted(row.items(), key=lambda kv: -kv[1])[:3]) for row in rows]
    averaged = average_topk(top3)
    for t in range(7):
        expected = sum(probs[k, t].item() for k in range(4) if t in top3[k]) / 4
        assert math.exp(averaged[t]) == pytest.approx(expected, rel=1e-6) if expected else t not in averaged
    assert sum(map(math.exp, averaged.values())) < 1  # the missing mass is the tail bucket's

    flat = FlatTopk(flatten_topk([averaged, rows[0]]))  # back to an engine output's layout
    assert flat[0] == averaged and flat[1] == rows[0] and len(flat) == 2


def test_supervised_records_for_gold_answers_demonstrations_and_plain_text(tiny_tokenizer):
    import random

    from cdscale.build_targets import TargetBuilder
    from cdscale.config import load_config

    cfg = load_config(None, ["student.batch_size=2"])
    task = Addition(1, 2)
    xs = task.sample_inputs(3, random.Random(0))
    eos = tiny_tokenizer.eos_token_id
    gold, _ = TargetBuilder(cfg, tiny_tokenizer).gold(task, xs, "gold")
    prompt = tiny_tokenizer(task.student_prompt(xs[0]))["input_ids"]
    assert gold[0]["input_ids"] == prompt + tiny_tokenizer(xs[0].gold, add_special_tokens=False)["input_ids"] + [eos]
    assert gold[0]["answer_start"] == len(prompt)
    demo, _ = TargetBuilder(cfg, tiny_tokenizer).gold(task, xs, "gold_demonstration")
    answer = tiny_tokenizer.decode(demo[0]["input_ids"][demo[0]["answer_start"] :], skip_special_tokens=True)
    assert answer == task.teacher_demonstration(xs[0])
    text, counts = TargetBuilder(cfg, tiny_tokenizer).gold(task, xs, "text")
    assert text[0]["input_ids"] == prompt + [eos] and text[0]["answer_start"] == 1 and counts.kept == 3
    assert [row[0] for row in text[0]["topk_ids"]] == prompt[1:] + [eos]  # every token after the first is a target


def test_gold_records_are_capped_by_the_students_positions_not_the_engines_context(tiny_tokenizer):
    """A supervised record is trained by the student, never generated from by an engine: one
    longer than teacher.max_model_len but within the student's positions is kept."""
    import random

    from cdscale.build_targets import TargetBuilder
    from cdscale.config import RunFailed, load_config

    task = Addition(1, 2)
    xs = task.sample_inputs(4, random.Random(0))
    uncapped, _ = TargetBuilder(load_config(None, ["student.batch_size=2"]), tiny_tokenizer).gold(task, xs, "gold")
    longest = max(len(r["input_ids"]) for r in uncapped)
    cfg = load_config(
        None, ["student.batch_size=2", f"teacher.max_model_len={longest - 1}", f"teacher.max_new_tokens={longest - 2}"]
    )
    records, counts = TargetBuilder(cfg, tiny_tokenizer, student_max_len=longest).gold(task, xs, "gold")
    assert counts.kept == 4 and counts.too_long == 0  # the engine's context does not cap them
    with pytest.raises(RunFailed, match="too_long"):  # the student's positions do: none fits in fewer
        TargetBuilder(cfg, tiny_tokenizer, student_max_len=3).gold(task, xs, "gold")


def test_gold_teacher_reasoning_is_the_gold_scratchpad_before_its_answer(tiny_tokenizer):
    """On-policy with `data.teacher_reasoning: gold`: the teacher reads the task's gold
    scratchpad (not a sample of its own) before the student's answer; no engine is asked."""
    from cdscale.build_targets import TargetBuilder
    from cdscale.config import load_config
    from cdscale.tasks import Example

    task = Addition(1, 3)
    xs = [Example("2 9 + 5 7", "8 6", {"a": 29, "b": 57}), Example("4 + 5", "9", {"a": 4, "b": 5})]
    builder = TargetBuilder(load_config(None, ["data.source=student", "data.teacher_reasoning=gold"]), tiny_tokenizer)
    answer = tiny_tokenizer("8 6", add_special_tokens=False)["input_ids"]
    student_samples = [{"token_ids": answer, "finish_reason": "stop"}, None]  # the second had no sample
    starts = [builder._answer_start(task, out) for out in student_samples]
    assert starts == [0, None]
    reasoning = builder.teacher_reasoning([task, task], xs, starts, 0, False)
    assert tiny_tokenizer.decode(reasoning[0]) == scratchpad(29, 57) + "\n"
    assert reasoning[1] == []  # nothing to read: no reasoning made for it
