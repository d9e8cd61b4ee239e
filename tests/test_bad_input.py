"""Bad input gets a clean, named error or a counted skip: random and malformed configs
(property-based) and teacher outputs that cannot be used."""

import json
import math
import random

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdscale.build_targets import TargetBuilder
from cdscale.config import Config, ConfigError, RunFailed, load_config, resolve_stages
from cdscale.tasks import build_task
from cdscale.tasks.records import load_records

FIELDS = [f"{section}.{name}" for section, sub in Config().to_dict().items() if isinstance(sub, dict) for name in sub]
VALUES = st.one_of(
    st.text(max_size=12),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.sampled_from(FIELDS), st.text(max_size=15)), st.text(max_size=12)), max_size=4))
def test_random_dotted_overrides_load_or_raise_a_config_error(pairs):
    try:
        cfg = load_config(None, [f"{k}={v}" for k, v in pairs])
    except ConfigError:
        return
    for values in (v for v in cfg.to_dict().values() if isinstance(v, dict)):  # what is accepted is usable
        assert all(math.isfinite(v) for v in values.values() if isinstance(v, float))
        assert all(v > 0 for k, v in values.items() if k in ("lr", "timeout_s", "kv_cache_gib"))


OPERATIONS = st.lists(
    st.dictionaries(st.sampled_from(["name", "task", "num_train", "inputs", "other"]), VALUES, max_size=3), max_size=3
)
STAGES = st.one_of(
    VALUES,
    st.lists(
        st.dictionaries(
            st.sampled_from(["name", "rounds", "operations", "other"]), st.one_of(VALUES, OPERATIONS), max_size=3
        ),
        max_size=3,
    ),
)


@settings(max_examples=300, deadline=None)
@given(STAGES)
def test_random_stages_load_or_raise_a_config_error(stages):
    try:
        cfg = load_config(None, [f"stages={json.dumps(stages)}"])
    except ConfigError:
        return
    assert all(stage.operations for stage in resolve_stages(cfg))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=4), st.booleans())
def test_random_yaml_files_load_or_raise_a_config_error_naming_the_field(tmp_path, values, flat):
    nested: dict = {}
    for dotted, value in values.items():
        section, name = dotted.split(".")
        nested.setdefault(section, {})[name] = value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(nested if not flat else list(values.items())))
    try:
        load_config(str(path), [])
    except ConfigError as err:
        assert (
            str(path) in str(err) or any(f in str(err) for f in values) or "section" in str(err) or "field" in str(err)
        )


def test_outputs_of_prompts_too_long_are_counted_and_fail_the_round_above_the_threshold(tiny_tokenizer):
    cfg = load_config(None, ["student.batch_size=2"])
    task = build_task("addition", {})
    examples = task.sample_inputs(4, random.Random(0))
    with pytest.raises(RunFailed, match="'too_long': 4") as err:
        TargetBuilder(cfg, tiny_tokenizer).from_outputs(task, examples, [None] * 4, 0)
    assert "teacher.max_model_len" in str(err.value)


def test_an_output_cut_off_after_its_answer_is_kept_and_one_cut_within_it_is_counted(tiny_tokenizer, tmp_path):
    # A first-line answer, then the model writes on until max_new_tokens: the answer is whole.
    records = tmp_path / "sums.jsonl"
    records.write_text('{"input": "1 + 2", "gold": "3"}\n{"input": "4 + 4", "gold": "8"}\n')
    cfg = load_config(None, ["student.batch_size=1", "student.num_ranks=1", "teacher.top_k=1"])
    task = build_task("records", {"path": str(records)})
    examples = [x for _, x in load_records(records)]

    def cut_off(text: str) -> dict:
        ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        return {
            "token_ids": ids,
            "finish_reason": "length",
            "logprob_ids": ids,
            "logprob_values": [0.0] * len(ids),
            "logprob_starts": list(range(len(ids) + 1)),
        }

    whole, cut = cut_off(" 3\nInput: 5 + 5\nAnswer: 1"), cut_off(" 1 2 3 4")
    records_kept, counts = TargetBuilder(cfg, tiny_tokenizer).from_outputs(task, examples, [whole, cut], 0)
    assert counts.truncated == 1 and counts.kept == 1
    assert records_kept[0]["answer"] == "3" and records_kept[0]["input"] == "1 + 2"
    # With an answer marker, a cut before the marker leaves the reasoning's first line as the
    # "answer": such outputs stay skipped, as do cut-off addition scratchpads.
    marked = build_task("records", {"path": str(records), "answer_marker": "</scratch>"})
    in_reasoning = cut_off("<scratch>\n1 + 2 , C: 0\n3")
    with pytest.raises(RunFailed, match="'truncated': 2"):
        TargetBuilder(cfg, tiny_tokenizer).from_outputs(marked, examples, [in_reasoning, in_reasoning], 0)
    addition = build_task("addition", {"min_digits": 1, "max_digits": 1})
    with pytest.raises(RunFailed, match="'truncated': 2"):
        TargetBuilder(cfg, tiny_tokenizer).from_outputs(addition, examples, [in_reasoning, whole], 0)
