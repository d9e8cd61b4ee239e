"""The chat task (cdscale/tasks/chat.py): prompts rendered by the model's own chat template for
each placement of the context, whole responses aligned through the end-of-turn token, and the
KL estimate of evaluation without gold, against references computed here by hand."""

import math
from types import SimpleNamespace

import pandas as pd
import pytest

from cdscale.build_targets import TargetBuilder
from cdscale.config import ConfigError
from cdscale.eval import kl_per_token, score_outputs
from cdscale.targets import flatten_topk
from cdscale.tasks import build_task

CONTEXT = "Always reply in French."
SYSTEM = "<|im_start|>system\n{}<|im_end|>\n"
USER = "<|im_start|>user\n{}<|im_end|>\n"
ASSISTANT = "<|im_start|>assistant\n{}<|im_end|>\n"
GENERATE = "<|im_start|>assistant\n"
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.parquet"
    pd.DataFrame(
        {"question": ["What is your name?", "Tell me a joke."], "ctx": [None, "Talk like a pirate."]}
    ).to_parquet(path)
    return path


def chat(smollm2_tokenizer, path, **options):
    task = build_task("chat", {"dataset": {"path": str(path)}, "columns": {"prompt": "question"}, **options})
    task.use_tokenizer(smollm2_tokenizer, max_model_len=512)
    return task


@pytest.mark.parametrize(
    "placement, teacher",
    [
        ("system", SYSTEM.format(CONTEXT) + USER.format("What is your name?")),
        ("user_prefix", SYSTEM.format(DEFAULT_SYSTEM) + USER.format(CONTEXT + "\n\nWhat is your name?")),
        ("user_suffix", SYSTEM.format(DEFAULT_SYSTEM) + USER.format("What is your name?\n\n" + CONTEXT)),
    ],
)
def test_each_placement_renders_with_smollm2s_template(smollm2_tokenizer, prompts_file, placement, teacher):
    task = chat(smollm2_tokenizer, prompts_file, context=CONTEXT, placement=placement)
    x = task.examples[0]
    assert task.teacher_prompt(x) == teacher + GENERATE
    # The student's conversation is the same without the context: the template's default system turn.
    assert task.student_prompt(x) == SYSTEM.format(DEFAULT_SYSTEM) + USER.format("What is your name?") + GENERATE


def test_a_rows_context_replaces_the_tasks_and_merges_into_its_system_turn(smollm2_tokenizer, tmp_path):
    path = tmp_path / "conversations.jsonl"
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Your name?"},
    ]
    pd.DataFrame({"messages": [turns], "ctx": ["Talk like a pirate."]}).to_json(path, orient="records", lines=True)
    task = build_task(
        "chat", {"dataset": {"path": str(path)}, "columns": {"messages": "messages", "context": "ctx"}, "context": ""}
    )
    task.use_tokenizer(smollm2_tokenizer, max_model_len=512)
    x = task.examples[0]
    rest = USER.format("Hi") + ASSISTANT.format("Hello!") + USER.format("Your name?") + GENERATE
    assert task.teacher_prompt(x) == SYSTEM.format("Talk like a pirate.\n\nBe brief.") + rest
    assert task.student_prompt(x) == SYSTEM.format("Be brief.") + rest


def test_demonstrations_as_earlier_turns_and_a_subset_per_ensemble_variant(smollm2_tokenizer, prompts_file, tmp_path):
    shown = tmp_path / "shown.csv"
    pd.DataFrame({"prompt": [f"Q{i}" for i in range(4)], "reply": [f"A{i}" for i in range(4)]}).to_csv(
        shown, index=False
    )
    task = chat(
        smollm2_tokenizer,
        prompts_file,
        context="",
        placement="turns",
        demonstrations={"dataset": str(shown), "columns": {"prompt": "prompt", "gold": "reply"}},
        demonstrations_per_prompt=2,
    )
    x = task.examples[1]  # with `turns`, the demonstrations are the context
    variants = [task.teacher_prompt_variant(x, v) for v in range(6)]
    for text in variants:
        pairs = [i for i in range(4) if USER.format(f"Q{i}") + ASSISTANT.format(f"A{i}") in text]
        assert len(pairs) == 2 and text.endswith(USER.format("Tell me a joke.") + GENERATE)
    assert len(set(variants)) > 1 and variants[0] == task.teacher_prompt(x)
    assert "Q0" not in task.student_prompt(x)


def test_a_tokenizer_without_a_chat_template_is_told_how_to_give_one(tiny_tokenizer, prompts_file):
    task = build_task("chat", {"dataset": str(prompts_file), "columns": {"prompt": "question"}, "context": CONTEXT})
    with pytest.raises(ConfigError, match="task.options.chat_template"):
        task.use_tokenizer(tiny_tokenizer, max_model_len=512)
    task = build_task(
        "chat",
        {
            "dataset": str(prompts_file),
            "columns": {"prompt": "question"},
            "context": CONTEXT,
            "chat_template": "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant] ",
        },
    )
    task.use_tokenizer(tiny_tokenizer, max_model_len=512)
    assert task.teacher_prompt(task.examples[0]) == f"[system] {CONTEXT}\n[user] What is your name?\n[assistant] "


def test_a_context_longer_than_the_window_stops_before_anything_starts(smollm2_tokenizer, prompts_file):
    with pytest.raises(ConfigError, match=r"task.options.context: \d+ tokens alone, and teacher.max_model_len is 64"):
        chat(smollm2_tokenizer, prompts_file, context="word " * 100).use_tokenizer(smollm2_tokenizer, 64)


@pytest.mark.parametrize(
    "options, error",
    [
        ({"placement": "footer"}, "placement: 'footer' is not one of"),
        ({"match": "fuzzy"}, "match: 'fuzzy' is not one of"),
        ({"placement": "turns"}, "demonstrations: given exactly when placement is 'turns'"),
        ({"checks": {"name": "x"}}, "checks"),
        ({"drift": "drift.parquet"}, "drift: expected"),
        ({"columns": {"prompt": "nope"}}, "no column 'nope'"),
    ],
)
def test_bad_options_name_the_option(prompts_file, options, error):
    with pytest.raises(ConfigError, match=f"task.options: .*{error}"):
        build_task("chat", {"dataset": str(prompts_file), "columns": {"prompt": "question"}, "context": "c", **options})


def _output(tokenizer, text: str, stop: bool) -> dict:
    """An engine output of `text`, ended by the end-of-turn token when `stop`, each position
    with its sampled token at logprob -0.5 and one other candidate."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if stop else [])
    return {
        "token_ids": ids,
        "finish_reason": "stop" if stop else "length",
        **flatten_topk([{t: -0.5, 0: -1.5} for t in ids]),
    }


@pytest.mark.parametrize("keep_truncated", [False, True])
def test_the_whole_response_is_the_target_through_the_end_of_turn_token(smollm2_tokenizer, tmp_path, keep_truncated):
    path = tmp_path / "conversation.jsonl"
    turns = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Bonjour !"},
        {"role": "user", "content": "Ça va ?"},
    ]
    pd.DataFrame({"messages": [turns]}).to_json(path, orient="records", lines=True)
    task = build_task(
        "chat",
        {
            "dataset": str(path),
            "columns": {"messages": "messages"},
            "context": CONTEXT,
            "keep_truncated": keep_truncated,
        },
    )
    task.use_tokenizer(smollm2_tokenizer, max_model_len=512)
    cfg = SimpleNamespace(teacher=SimpleNamespace(top_k=1, max_answer_skip_fraction=1.0, max_model_len=512))
    builder = TargetBuilder(cfg, smollm2_tokenizer)
    x = task.examples[0]
    response = "Oui, très bien.\nEt vous ?"
    stopped, cut = _output(smollm2_tokenizer, response, stop=True), _output(smollm2_tokenizer, response, stop=False)

    skipped, record = builder._teacher_record(task, x, stopped)
    student_ids = smollm2_tokenizer(task.student_prompt(x))["input_ids"]
    assert skipped is None and record["answer"] == response
    assert record["input_ids"] == student_ids + stopped["token_ids"]  # every response token, <|im_end|> last
    assert record["input_ids"][-1] == smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert record["answer_start"] == len(student_ids) and len(record["topk_ids"]) == len(stopped["token_ids"])
    assert smollm2_tokenizer.decode(record["input_ids"]) == task.student_prompt(x) + response + "<|im_end|>"

    skipped, record = builder._teacher_record(task, x, cut)
    if keep_truncated:  # kept without a stop token
        assert skipped is None and record["input_ids"] == student_ids + cut["token_ids"]
    else:
        assert skipped == "truncated"


def test_rules_and_gold_are_scored_on_each_response(smollm2_tokenizer, tmp_path):
    path = tmp_path / "gold.jsonl"
    pd.DataFrame(
        {"prompt": ["Capital of France?", "Say hi", "Your name?"], "gold": ["Paris", None, "Zorblax"]}
    ).to_json(path, orient="records", lines=True)
    task = build_task(
        "chat",
        {
            "dataset": str(path),
            "columns": {"prompt": "prompt", "gold": "gold"},
            "context": "Réponds en français.",
            "match": "contains",
            "checks": [{"name": "french", "language": "fr"}, {"name": "short", "max_words": 5}],
        },
    )
    tok = SimpleNamespace(decode=lambda ids, skip_special_tokens: ids[0])
    outputs = [{"token_ids": ["La capitale de la France est Paris."]}, {"token_ids": ["Salut !"]}, None]
    metrics, rows = score_outputs(task, tok, task.examples, [[1, 2], [1], [1, 2, 3]], outputs)
    # Gold over the two rows that have one (the third was too long to send: a miss); rules over all three.
    assert metrics["accuracy"] == 0.5
    assert metrics["rules"] == {"french": pytest.approx(1 / 3), "short": pytest.approx(1 / 3)}
    assert rows[0]["rules"] == {"french": True, "short": False} and rows[1]["score"] is None


def test_kl_per_token_is_the_mean_log_ratio_over_every_scored_token():
    reference = [[-0.1, -0.2, -0.3], None, [-1.0]]
    scored = [[-0.5, -0.2, -1.3], [-2.0], [-0.5]]
    direct = ((-0.1 + 0.5) + 0.0 + (-0.3 + 1.3) + (-1.0 + 0.5)) / 4
    assert kl_per_token(reference, scored) == pytest.approx(direct)
    assert kl_per_token([None], [[-1.0]]) is None


def test_kl_per_token_estimates_the_kl_of_the_response_distributions():
    """Two-token responses from p (independent positions) scored under q: the estimate over every
    response, weighted by its probability, is the exact KL(p || q) divided by the 2 tokens."""
    p = [{"a": 0.7, "b": 0.3}, {"a": 0.2, "b": 0.8}]
    q = [{"a": 0.5, "b": 0.5}, {"a": 0.6, "b": 0.4}]
    exact = sum(sum(p[j][t] * math.log(p[j][t] / q[j][t]) for t in "ab") for j in range(2)) / 2
    responses = [(s, t) for s in "ab" for t in "ab"]
    weights = [p[0][s] * p[1][t] for s, t in responses]
    estimate = sum(
        w * kl_per_token([[math.log(p[j][y[j]]) for j in range(2)]], [[math.log(q[j][y[j]]) for j in range(2)]])
        for w, y in zip(weights, responses)
    )
    assert estimate == pytest.approx(exact)


def test_a_users_own_dataset_with_another_column_name_is_two_override_lines(tmp_path, monkeypatch):
    from pathlib import Path

    from cdscale.config import load_config, resolve_stages
    from cdscale.inputs import build_tasks

    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)  # the config's data paths are relative to the repository root
    mine = tmp_path / "my.parquet"
    pd.DataFrame({"question": ["How do I boil an egg?", "What is a haiku?"]}).to_parquet(mine)
    cfg = load_config(
        "configs/system_prompt.yaml", [f"task.options.dataset.path={mine}", "task.options.columns.prompt=question"]
    )
    [task] = build_tasks(resolve_stages(cfg)).values()
    assert [x.input for x in task.examples] == ["How do I boil an egg?", "What is a haiku?"]
    with pytest.raises(ConfigError, match=r"my.parquet.*no column 'prompt'"):
        build_tasks(resolve_stages(load_config("configs/system_prompt.yaml", [f"task.options.dataset.path={mine}"])))
