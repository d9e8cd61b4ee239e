"""A chat task's user turns through `datasets`: each source format reads back what was written
(files made with pandas, pyarrow and datasets themselves), and every bad input is one
ChatDataError naming the file and, where it applies, the row, the column and the turn."""

import gzip
import json
import re
import tempfile

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cdscale.tasks.chat_data import COLUMN_KEYS, ChatDataError, ChatRow, load_chat_rows

datasets.disable_progress_bars()

CONVERSATIONS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3 + 3?"},
    ],
]
EXPECTED_CONVERSATIONS = [
    ChatRow(row=0, messages=(("system", "Be brief."), ("user", "Hi"))),
    ChatRow(row=1, messages=(("user", "2 + 2?"), ("assistant", "4"), ("user", "And 3 + 3?"))),
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def load(path, columns=None, **dataset):
    return load_chat_rows({"path": str(path), **dataset}, columns)


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """No test may reach the hub: a hub id would go to load_dataset without a builder name."""
    real = datasets.load_dataset

    def local_only(path, *args, **kwargs):
        assert path in ("json", "csv", "parquet"), f"a hub lookup of {path!r}"
        return real(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", local_only)


def test_jsonl_with_gold_and_context_reads_back(tmp_path):
    path = write_jsonl(
        tmp_path / "q.jsonl",
        [
            {"prompt": "Capital of France?", "gold": "Paris", "context": "You are a geographer."},
            {"prompt": " Capital of Peru? ", "gold": None, "context": None},
            {"prompt": "Capital of Chad?", "gold": "N'Djamena", "context": ""},
        ],
    )
    rows = load(path, {"prompt": "prompt", "gold": "gold", "context": "context"})
    assert rows == [
        ChatRow(0, (("user", "Capital of France?"),), gold="Paris", context="You are a geographer."),
        ChatRow(1, (("user", " Capital of Peru? "),), gold=None, context=None),
        ChatRow(2, (("user", "Capital of Chad?"),), gold="N'Djamena", context=None),  # "" is no context
    ]
    assert load(path) == [ChatRow(i, row.messages) for i, row in enumerate(rows)]  # default: prompt only


@pytest.mark.parametrize("lines", [False, True], ids=["array", "lines"])
def test_json_array_or_lines_with_a_mapped_column(tmp_path, lines):
    path = tmp_path / "q.json"
    pd.DataFrame({"question": ["a?", "b?"], "answer": ["A", "B"]}).to_json(path, orient="records", lines=lines)
    rows = load(path, {"prompt": "question", "gold": "answer"})
    assert rows == [ChatRow(0, (("user", "a?"),), gold="A"), ChatRow(1, (("user", "b?"),), gold="B")]


def test_csv_cells_are_text_and_only_empty_ones_missing(tmp_path):
    path = tmp_path / "q.csv"
    frame = pd.DataFrame({"question": ["12 + 30?", "Say NA", "Hi"], "gold": ["042", "NA", None], "n": [1, 2, 3]})
    frame.to_csv(path, index=False)
    assert "042" in path.read_text()
    rows = load(path, {"prompt": "question", "gold": "gold"})
    assert [(r.messages, r.gold) for r in rows] == [
        ((("user", "12 + 30?"),), "042"),  # not the number 42
        ((("user", "Say NA"),), "NA"),  # not missing
        ((("user", "Hi"),), None),  # an empty cell
    ]


def test_parquet_and_jsonl_conversations_read_back(tmp_path):
    parquet = tmp_path / "chats.parquet"
    pq.write_table(pa.table({"messages": CONVERSATIONS, "gold": ["hello", "6"]}), parquet)
    jsonl = write_jsonl(tmp_path / "chats.jsonl", [{"conversation": turns} for turns in CONVERSATIONS])
    expected = [ChatRow(r.row, r.messages, gold) for r, gold in zip(EXPECTED_CONVERSATIONS, ["hello", "6"])]
    assert load(parquet, {"messages": "messages", "gold": "gold"}) == expected
    assert load(jsonl, {"messages": "conversation"}) == EXPECTED_CONVERSATIONS


def test_gzipped_jsonl_format_override_and_slicing(tmp_path):
    rows = [{"prompt": f"q{i}"} for i in range(10)]
    zipped = tmp_path / "q.jsonl.gz"
    with gzip.open(zipped, "wt") as f:
        f.write("".join(json.dumps(row) + "\n" for row in rows))
    assert [r.messages[0][1] for r in load(zipped)] == [f"q{i}" for i in range(10)]
    unnamed = write_jsonl(tmp_path / "q.txt", rows)
    assert [r.messages[0][1] for r in load(unnamed, format="jsonl", split="train[:30%]")] == ["q0", "q1", "q2"]
    assert [r.row for r in load(unnamed, format="json", split="train[-2:]")] == [0, 1]  # rows of the split


def test_save_to_disk_folders(tmp_path):
    data = datasets.Dataset.from_dict({"prompt": ["a", "b"], "context": ["c", None]})
    data.set_format("numpy")  # kept in the folder; the rows still come back as Python strings
    data.save_to_disk(tmp_path / "one")
    assert load(tmp_path / "one") == [ChatRow(0, (("user", "a"),)), ChatRow(1, (("user", "b"),))]
    assert load(tmp_path / "one", {"prompt": "prompt", "context": "context"})[0].context == "c"

    splits = datasets.DatasetDict({"train": data, "test": datasets.Dataset.from_dict({"prompt": ["t"]})})
    splits.save_to_disk(tmp_path / "two")
    assert [r.messages for r in load(tmp_path / "two")] == [(("user", "a"),), (("user", "b"),)]
    assert load(tmp_path / "two", split="test") == [ChatRow(0, (("user", "t"),))]
    with pytest.raises(ChatDataError, match=r"two: no split 'dev' \(splits: \['test', 'train'\]\)"):
        load(tmp_path / "two", split="dev")
    with pytest.raises(ChatDataError, match="two: split 'train\\[:50%\\]'.*no slicing"):
        load(tmp_path / "two", split="train[:50%]")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ChatDataError, match="plain: a folder, but not one written by"):
        load(tmp_path / "plain")


def test_local_files_leave_no_cache_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    path = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "a"}])
    assert load(path) == [ChatRow(0, (("user", "a"),))]
    assert not (tmp_path / "hf-cache").exists() and not any((tmp_path / "tmp").iterdir())


def test_a_hub_id_goes_to_load_dataset(monkeypatch):
    calls = []

    def fake_hub(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.Dataset.from_dict({"prompt": ["from the hub"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    assert load("owner/chat-prompts", split="test") == [ChatRow(0, (("user", "from the hub"),))]
    assert calls == [("owner/chat-prompts", {"split": "test"})]


@pytest.mark.parametrize("path", ["missing.jsonl", "data/q.parquet", "./prompts", "a/b/c", "data/x.csv.gz"])
def test_a_missing_local_path_is_not_a_hub_lookup(tmp_path, monkeypatch, path):
    monkeypatch.chdir(tmp_path)  # relative paths are relative to the current directory
    with pytest.raises(ChatDataError, match=f"^{re.escape(path)}: does not exist$"):
        load(path)


def test_relative_paths_are_read_from_the_current_directory(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "q.jsonl", [{"prompt": "here"}])
    monkeypatch.chdir(tmp_path)
    assert load("q.jsonl") == [ChatRow(0, (("user", "here"),))]


def raw(text):
    return lambda path: path.write_bytes(text if isinstance(text, bytes) else text.encode())


def lines(*rows):
    return lambda path: write_jsonl(path, rows)


GOOD_TURNS = [{"role": "user", "content": "ok"}]
BAD_FILES = [
    # (file name, writer, columns, what the message says after the file name)
    ("q.parquet", raw("just some text\n"), None, r": not a readable parquet file \(Parquet magic bytes"),
    ("q.json", raw("garbage{{\n"), None, r": not a readable json file \(JSON parse error"),
    ("q.csv", raw(b'a,"b\n\xff\n'), None, r": not a readable csv file \("),
    ("q.jsonl", raw(""), None, r": no rows \(an empty file\)"),
    ("q.jsonl", raw("\n\n"), None, r": no rows \(an empty dataset"),
    ("q.csv", raw("prompt,gold\n"), None, r": no rows \(an empty dataset"),
    ("q.dat", lines({"prompt": "a"}), None, r": cannot tell the format from the name"),
    (
        "q.jsonl",
        lines({"question": "a", "id": 1}),
        None,
        r": no column 'prompt' \(for 'prompt'; columns: \['question', 'id'\]\)",
    ),
    (
        "q.jsonl",
        lines({"q": "a"}),
        {"prompt": "q", "gold": "answer"},
        r": no column 'answer' \(for 'gold'; columns: \['q'\]\)",
    ),
    ("q.jsonl", lines({"q": "a"}), {"prompt": "q", "label": "q"}, r": columns: unknown key 'label'"),
    ("q.jsonl", lines({"q": "a"}), {"prompt": "q", "messages": "q"}, r": columns: map exactly one of"),
    ("q.jsonl", lines({"q": "a"}), {"gold": "q"}, r": columns: map exactly one of"),
    ("q.jsonl", lines({"q": "a"}, {"q": "  \n"}), {"prompt": "q"}, r" row 1 column 'q': empty prompt"),
    ("q.jsonl", lines({"q": "a"}, {"q": None}), {"prompt": "q"}, r" row 1 column 'q': empty prompt"),
    ("q.jsonl", lines({"q": "a"}, {"q": 7}), {"prompt": "q"}, r" row 1 column 'q': prompt must be a string, got int"),
    ("q.csv", raw('q\na\n\n\n""\n'), {"prompt": "q"}, r" row 1 column 'q': empty prompt"),
    (
        "q.jsonl",
        lines({"p": "a", "g": "b"}, {"p": "a", "g": 4}),
        {"prompt": "p", "gold": "g"},
        r" row 1 column 'g': gold must be a string or null, got int",
    ),  # noqa: E501
    (
        "q.jsonl",
        lines({"p": "a", "c": ["x"]}),
        {"prompt": "p", "context": "c"},
        r" row 0 column 'c': context must be a string or null, got list",
    ),  # noqa: E501
]
MESSAGES = {"messages": "m"}
BAD_CONVERSATIONS = [
    ("a string", "hi", r" row 1 column 'm': expected a non-empty list of turns, got str"),
    ("empty", [], r" row 1 column 'm': expected a non-empty list of turns, got an empty list"),
    ("turn not a mapping", ["hi"], r" row 1 column 'm' turn 0: expected a mapping with 'role' and 'content', got str"),
    ("no role", [{"content": "hi"}], r" row 1 column 'm' turn 0: role None is not one of \['system', 'user'"),
    (
        "bad role",
        [*GOOD_TURNS, {"role": "assistant", "content": "x"}, {"role": "bot", "content": "x"}],
        r" row 1 column 'm' turn 2: role 'bot' is not one of \['system', 'user', 'assistant'\]",
    ),
    (
        "late system",
        [*GOOD_TURNS, {"role": "system", "content": "x"}, *GOOD_TURNS],
        r" row 1 column 'm' turn 1: a system turn may only come first",
    ),
    ("content", [{"role": "user", "content": 3}], r" row 1 column 'm' turn 0: content must be a string, got int"),
    ("no content", [{"role": "user"}], r" row 1 column 'm' turn 0: content must be a string, got null"),
    (
        "ends with assistant",
        [*GOOD_TURNS, {"role": "assistant", "content": "x"}],
        r" row 1 column 'm' turn 1: the last turn must be a user turn, got role 'assistant'",
    ),
    ("empty user turn", [{"role": "user", "content": " "}], r" row 1 column 'm' turn 0: empty user turn"),
]


@pytest.mark.parametrize("name, write, columns, message", BAD_FILES)
def test_a_bad_file_names_itself_and_the_row(tmp_path, name, write, columns, message):
    path = tmp_path / name
    write(path)
    with pytest.raises(ChatDataError, match=f"^{re.escape(str(path))}{message}"):
        load(path, columns)


@pytest.mark.parametrize(
    "turns, message", [case[1:] for case in BAD_CONVERSATIONS], ids=[c[0] for c in BAD_CONVERSATIONS]
)
@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_a_bad_conversation_names_the_row_and_turn(tmp_path, turns, message, suffix):
    path = tmp_path / f"chats.{suffix}"
    rows = [{"m": GOOD_TURNS}, {"m": turns}]
    if suffix == "parquet":
        try:  # pyarrow types a column: only the cases that fit a list of turns can be Parquet
            table = pa.Table.from_pylist(rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pytest.skip("no Parquet column holds these turns")
        pq.write_table(table, path)
    else:
        write_jsonl(path, rows)
    with pytest.raises(ChatDataError, match=f"^{re.escape(str(path))}{message}"):
        load(path, MESSAGES)


def test_bad_options(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "a"}])
    with pytest.raises(ChatDataError, match="dataset: unknown key 'splits'"):
        load_chat_rows({"path": str(path), "splits": "train"})
    with pytest.raises(ChatDataError, match="q.jsonl: format 'txt' is not one of"):
        load(path, format="txt")
    with pytest.raises(ChatDataError, match=r"q.jsonl: split 'train\[x\]' is not a split name or slice"):
        load(path, split="train[x]")
    with pytest.raises(ChatDataError, match="q.jsonl: a data file has one split, 'train'; got split 'train\\+test'"):
        load(path, split="train+test")
    with pytest.raises(ChatDataError, match="q.jsonl: columns: 'prompt' must name a column, got 3"):
        load(path, {"prompt": 3})
    assert COLUMN_KEYS == ("prompt", "messages", "gold", "context")
