"""The records-file task: prompts, the extractor f, the scorer, and a clean error naming the
file and line for every kind of malformed record (examples, then property-based)."""

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdscale.cli import main
from cdscale.config import ConfigError
from cdscale.tasks import build_task
from cdscale.tasks.records import RecordError, Records, load_records


def write(tmp_path, lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_prompts_extractor_and_score(tmp_path):
    path = write(
        tmp_path,
        [
            json.dumps({"input": "2 + 2", "gold": "4", "unit": "apples"}),
            "",
            json.dumps({"input": "1 + 1", "gold": " 2 ", "unit": "pears"}),
        ],
    )
    task = build_task(
        "records",
        {"path": str(path), "context": "Add the numbers.", "teacher_template": "{context}\nQ: {input} {unit}\nA:"},
    )
    assert [x.input for x in task.examples] == ["2 + 2", "1 + 1"]
    x = task.examples[0]
    assert task.teacher_prompt(x) == "Add the numbers.\nQ: 2 + 2 apples\nA:"
    assert task.student_prompt(x) == "Input: 2 + 2\nAnswer:"
    completion = "\n  4 \nmore text"
    start, end = task.answer_span(completion)
    assert completion[start:end] == "4" and task.score(x, "4") == 1.0
    assert task.score(task.examples[1], "2") == 1.0 and task.score(x, "5") == 0.0 and task.score(x, None) == 0.0
    assert task.answer_span("\n \n") is None
    drawn = task.sample_inputs(200, random.Random(0))
    assert {d.input for d in drawn} == {"2 + 2", "1 + 1"}


def test_answer_marker_starts_the_search_after_the_last_marker(tmp_path):
    task = Records(str(write(tmp_path, [json.dumps({"input": "q", "gold": "b"})])), answer_marker="</scratch>")
    for completion in ("<scratch>\nmaybe a</scratch> x\n</scratch>  b\n", "<scratch>\n1 + 1\n</scratch>\n b \n"):
        start, end = task.answer_span(completion)
        assert completion[start:end] == "b"
    assert task.extract_answer(" b\n") == "b"  # a direct answer has no marker
    assert task.extract_answer("<scratch>\n</scratch>\n") is None


@pytest.mark.parametrize(
    "lines,message",
    [
        (['{"input": "a", "gold": "b"}', "{not json"], "line 2: not valid JSON"),
        (['["input", "gold"]'], "line 1: expected a JSON object, got list"),
        (['{"gold": "b"}'], "line 1: missing field 'input'"),
        (['{"input": "a"}'], "line 1: missing field 'gold'"),
        (['{"input": 3, "gold": "b"}'], "line 1: field 'input' must be a string, got int"),
        (['{"input": "a", "gold": null}'], "line 1: field 'gold' must be a string, got NoneType"),
        (['{"input": "  ", "gold": "b"}'], "line 1: field 'input' is empty"),
        (["", "  "], "no records (an empty dataset)"),
    ],
)
def test_malformed_records_name_the_file_and_line(tmp_path, lines, message):
    path = write(tmp_path, lines)
    with pytest.raises(RecordError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        load_records(path)
    assert str(path) in str(err.value)


def test_bytes_that_are_not_utf8_and_a_missing_file(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"input": "a", "gold": "b"}\n{"input": "caf\xe9", "gold": "b"}\n')
    with pytest.raises(RecordError, match="line 2: not UTF-8"):
        load_records(path)
    with pytest.raises(RecordError, match="does not exist"):
        load_records(tmp_path / "nowhere.jsonl")


def test_a_record_over_max_record_bytes_is_refused_without_reading_the_rest_of_it(tmp_path):
    import tracemalloc

    record = '{"input": "%s", "gold": "b"}'
    exact = record % ("x" * (100 - len(record % "")))  # 100 bytes, the limit: kept
    path = write(tmp_path, [exact, exact, record % ("x" * 200)])
    with pytest.raises(RecordError, match=r"line 3: longer than max_record_bytes=100") as err:
        load_records(path, max_record_bytes=100)
    assert str(path) in str(err.value)
    assert len(load_records(write(tmp_path, [exact, exact]), max_record_bytes=100)) == 2
    crlf = tmp_path / "crlf.jsonl"  # the limit, then "\r\n": kept, and the next line is line 2
    crlf.write_bytes(exact.encode() + b"\r\n" + b"{oops\r\n")
    with pytest.raises(RecordError, match="line 2: not valid JSON"):
        load_records(crlf, max_record_bytes=100)
    split = tmp_path / "split.jsonl"  # a "\r" just past the limit must not cut a line in two
    split.write_bytes(exact.encode() + b"\r" + exact.encode() + b"\n")
    with pytest.raises(RecordError, match="line 1: longer than max_record_bytes=100"):
        load_records(split, max_record_bytes=100)
    with pytest.raises(RecordError, match="max_record_bytes: must be a positive integer"):
        Records(str(path), max_record_bytes=0)
    # 64 MiB without a line break: refused after reading about the 1 MiB default.
    blob = tmp_path / "blob.jsonl"
    with open(blob, "wb") as f:
        for _ in range(64):
            f.write(b"[" * (1 << 20))
    tracemalloc.start()
    with pytest.raises(RecordError, match="line 1: longer than max_record_bytes=1048576"):
        load_records(blob)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20


def test_templates_are_checked_against_the_records(tmp_path):
    path = str(
        write(tmp_path, [json.dumps({"input": "a", "gold": "b", "hint": "h"}), json.dumps({"input": "c", "gold": "d"})])
    )
    with pytest.raises(RecordError, match=r"line 2: missing field\(s\) \['hint'\]"):
        Records(path, teacher_template="{hint} {input}")
    with pytest.raises(RecordError, match=r"student_template: must contain \{input\}"):
        Records(path, student_template="Answer:")
    with pytest.raises(RecordError, match="teacher_template: "):
        Records(path, teacher_template="{input")


def test_the_cli_reports_a_bad_record_with_exit_status_2(tmp_path, capsys):
    path = write(tmp_path, ['{"input": "a", "gold": "b"}', '{"input": "a", "gold": 7}'])
    assert main(["run", "task.name=records", f"task.options={{path: {path}}}", f"run.output_root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert f"task.options: {path} line 2: field 'gold' must be a string, got int" in err
    assert main(["run", "task.name=records", "task.options={}", f"run.output_root={tmp_path}"]) == 2
    assert "task.options: " in (err := capsys.readouterr().err) and "'path'" in err


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["input", "gold", "x"]), inner, max_size=3)
    ),
    max_leaves=6,
)
LINES = st.one_of(
    JSON_VALUES.map(json.dumps),
    st.fixed_dictionaries({"input": st.text(max_size=8), "gold": st.text(max_size=8)}).map(json.dumps),
    st.text(max_size=20).filter(lambda t: "\n" not in t and "\r" not in t),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(LINES, max_size=6), st.binary(max_size=8))
def test_random_records_load_or_raise_an_error_naming_the_file(tmp_path, lines, tail):
    path = tmp_path / "random.jsonl"
    path.write_bytes("".join(line + "\n" for line in lines).encode() + tail)
    try:
        loaded = load_records(path)
    except RecordError as err:
        assert str(path) in str(err)
        return
    assert loaded and all(isinstance(x.input, str) and x.input.strip() and isinstance(x.gold, str) for _, x in loaded)


@pytest.mark.parametrize(
    "answer, gold, expected",
    [
        ("The capital of India is New Delhi.", "New Delhi", 1.0),
        ("new delhi", "New Delhi", 1.0),
        ("Delhi is new", "New Delhi", 0.0),  # the words in order, next to each other
        ("The capital is St. George's.", "St. George's", 1.0),
        ("Parisian", "Paris", 0.0),  # whole words only
        ("The opposite of 'hot' is 'cold'.", "cold", 1.0),  # quotes are not part of a word
        ("It is N’Djamena.", "N'Djamena", 1.0),  # either apostrophe
        ("It is N'Djamena.", "N'Djamena", 1.0),
        ("", "Lima", 0.0),
        (None, "Lima", 0.0),
    ],
)
def test_match_words_finds_the_golds_words_in_the_answer(tmp_path, answer, gold, expected):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"input": "x", "gold": gold}) + "\n")
    task = build_task("records", {"path": str(path), "match": "words"})
    assert task.score(task.examples[0], answer) == expected
    # Exact match stays the default.
    assert build_task("records", {"path": str(path)}).score(task.examples[0], answer) == float(answer == gold)
    with pytest.raises(ConfigError, match="task.options: match: must be 'exact' or 'words'"):
        build_task("records", {"path": str(path), "match": "fuzzy"})
