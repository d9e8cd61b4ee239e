"""The user turns of a chat task, read with the `datasets` library and checked before a run starts.

    dataset: {path: data/questions.parquet, split: "train[:80%]"}
    columns: {prompt: question, gold: answer}

`path` is a local data file (.json/.jsonl, also gzipped, .csv, .parquet; `format` overrides
the guess from the extension), a folder written by `Dataset.save_to_disk` or
`DatasetDict.save_to_disk`, or else a hub dataset id. Each row holds either a `prompt` (one
user turn) or `messages` (a conversation that ends in a user turn), and optionally a `gold`
answer and a per-row `context`. Every problem is one ChatDataError naming the file and, where
it applies, the 0-based row, the column and the turn.

A data file has one split, "train", which may be sliced ("train[:80%]"); a save_to_disk
folder's split is taken whole (a single Dataset has no splits, so `split` only picks one of a
DatasetDict's). CSV cells are read as text: only an empty cell is missing (None), so a gold
"007" or "NA" stays as written.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import datasets
import pyarrow


class ChatDataError(ValueError):
    pass


@dataclass(frozen=True)
class ChatRow:
    row: int  # 0-based row index in the loaded split
    messages: tuple[tuple[str, str], ...]  # (role, content) turns; the last is a user turn
    gold: str | None = None
    context: str | None = None  # a per-row context, when a context column is mapped


COLUMN_KEYS = ("prompt", "messages", "gold", "context")
DATASET_KEYS = ("path", "split", "format")
ROLES = ("system", "user", "assistant")
FORMATS = {"json": "json", "jsonl": "json", "csv": "csv", "parquet": "parquet"}  # ours -> the datasets builder
_EXTENSIONS = {".json": "json", ".jsonl": "json", ".json.gz": "json", ".jsonl.gz": "json"}
_EXTENSIONS.update({".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet"})
# How the hub spells a dataset id ("squad", "owner/name"); anything else is a local path.
_HUB_ID = re.compile(r"[\w-][\w.-]*(/[\w-][\w.-]*)?")
# What reading a file that is not what it claims raises: datasets wraps the parser's error
# (pyarrow, pandas, a codec) in DatasetGenerationError, except for Parquet, whose pyarrow error
# comes through bare; an empty JSON file ends the reader with a StopIteration; a bad gzip is an OSError.
_READ_ERRORS = (datasets.exceptions.DatasetsError, pyarrow.ArrowException, ValueError, StopIteration, OSError)


def load_chat_rows(dataset: dict, columns: dict | None = None) -> list[ChatRow]:
    """`dataset`: {"path": ..., "split": "train" (default), "format": optional override}.
    `columns`: maps our names to the dataset's column names: {"prompt": "question"} etc.
    Default {"prompt": "prompt"}; exactly one of prompt / messages must be mapped."""
    path, split, fmt = _dataset_options(dataset)
    columns = _check_columns(path, {"prompt": "prompt"} if columns is None else columns)
    table = _load(path, split, fmt, text_columns=list(columns.values()))
    for key, name in columns.items():
        if name not in table.column_names:
            raise ChatDataError(f"{path}: no column {name!r} (for {key!r}; columns: {table.column_names})")
    if len(table) == 0:
        raise ChatDataError(f"{path}: no rows (an empty dataset)")
    # to_list reads the Arrow table itself: plain Python values whatever format a saved dataset was given.
    records = table.select_columns(list(dict.fromkeys(columns.values()))).to_list()
    return [_chat_row(path, number, record, columns) for number, record in enumerate(records)]


def _dataset_options(dataset: dict) -> tuple[str, str, str | None]:
    if not isinstance(dataset, Mapping):
        raise ChatDataError(f"dataset: expected a mapping, got {dataset!r}")
    unknown = sorted(set(dataset) - set(DATASET_KEYS))
    if unknown:
        raise ChatDataError(f"dataset: unknown key {unknown[0]!r} (allowed: {list(DATASET_KEYS)})")
    path, split, fmt = dataset.get("path"), dataset.get("split", "train"), dataset.get("format")
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise ChatDataError(f"dataset.path: expected a file, folder or hub id, got {path!r}")
    if not isinstance(split, str) or not split.strip():
        raise ChatDataError(f"{path}: split must be a non-empty string, got {split!r}")
    if fmt is not None and fmt not in FORMATS:
        raise ChatDataError(f"{path}: format {fmt!r} is not one of {list(FORMATS)}")
    return str(path), split, fmt


def _check_columns(path: str, columns: dict) -> dict[str, str]:
    if not isinstance(columns, Mapping):
        raise ChatDataError(f"{path}: columns: expected a mapping, got {columns!r}")
    for key, name in columns.items():
        if key not in COLUMN_KEYS:
            raise ChatDataError(f"{path}: columns: unknown key {key!r} (allowed: {list(COLUMN_KEYS)})")
        if not isinstance(name, str) or not name:
            raise ChatDataError(f"{path}: columns: {key!r} must name a column, got {name!r}")
    if ("prompt" in columns) == ("messages" in columns):
        raise ChatDataError(f"{path}: columns: map exactly one of 'prompt' and 'messages', got {sorted(columns)}")
    return dict(columns)


def _load(path: str, split: str, fmt: str | None, text_columns: list[str]) -> datasets.Dataset:
    local = Path(path).expanduser()
    if local.is_dir():
        if fmt is not None:
            raise ChatDataError(f"{path}: format applies to a data file, and this is a folder")
        return _load_folder(path, local, split)
    if local.is_file():
        return _load_file(path, local, split, fmt, text_columns)
    if fmt is not None or _extension(path) or not _HUB_ID.fullmatch(path):
        raise ChatDataError(f"{path}: does not exist")
    try:
        return datasets.load_dataset(path, split=split)  # a hub dataset, cached where the user's datasets caches
    except Exception as err:  # the hub's errors are many (not found, offline, gated): report any
        raise ChatDataError(
            f"{path}: not an existing local path, and loading it as a hub dataset id failed ({_first_line(err)})"
        ) from None


def _extension(path: str) -> str | None:
    name = path.lower()
    return next((ext for ext in sorted(_EXTENSIONS, key=len, reverse=True) if name.endswith(ext)), None)


def _load_file(path: str, local: Path, split: str, fmt: str | None, text_columns: list[str]) -> datasets.Dataset:
    builder = FORMATS[fmt] if fmt else _EXTENSIONS.get(_extension(path) or "")
    if builder is None:
        raise ChatDataError(f"{path}: cannot tell the format from the name; set format to one of {list(FORMATS)}")
    _check_file_split(path, split)
    if local.stat().st_size == 0:
        raise ChatDataError(f"{path}: no rows (an empty file)")
    # CSV has no types: pandas would read a gold "007" as the number 7 and "NA" as missing.
    # The mapped columns stay text, and only an empty cell is missing.
    options: dict[str, Any] = {}
    if builder == "csv":
        options = {"converters": dict.fromkeys(text_columns, str), "keep_default_na": False, "na_values": [""]}
    # load_dataset turns every data file into Arrow files under a cache folder, by default
    # ~/.cache/huggingface/datasets, where each input file would stay as a copy. A temporary
    # folder is removed when the file is read; keep_in_memory loads the table into memory, so
    # the Dataset does not map the files that go with the folder.
    with tempfile.TemporaryDirectory(prefix="cdscale-datasets-") as cache:
        try:
            return datasets.load_dataset(
                builder, data_files=str(local), split=split, cache_dir=cache, keep_in_memory=True, **options
            )
        except _READ_ERRORS as err:
            if "corresponds to no data" in str(err):  # a file of blank lines, a header alone, an empty slice
                raise ChatDataError(f"{path}: no rows (an empty dataset, split {split!r})") from None
            raise ChatDataError(f"{path}: not a readable {builder} file ({_first_line(err)})") from None


def _check_file_split(path: str, split: str) -> None:
    try:
        datasets.ReadInstruction.from_spec(split)
    except ValueError:
        raise ChatDataError(f"{path}: split {split!r} is not a split name or slice like 'train[:80%]'") from None
    names = [re.match(r"\s*([\w.]*)", part).group(1) for part in split.split("+")]
    if set(names) != {"train"}:
        raise ChatDataError(f"{path}: a data file has one split, 'train'; got split {split!r}")


def _load_folder(path: str, local: Path, split: str) -> datasets.Dataset:
    try:
        loaded = datasets.load_from_disk(str(local))  # memory-maps the folder's own Arrow files; no cache
    except FileNotFoundError:
        raise ChatDataError(f"{path}: a folder, but not one written by Dataset/DatasetDict.save_to_disk") from None
    if not re.fullmatch(r"\w+(\.\w+)*", split):
        raise ChatDataError(f"{path}: split {split!r}: a save_to_disk folder's splits are taken whole (no slicing)")
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ChatDataError(f"{path}: no split {split!r} (splits: {sorted(loaded)})")
        return loaded[split]
    return loaded


def _first_line(err: BaseException) -> str:
    while err.__cause__ is not None:  # datasets wraps the parser's error: that one says what is wrong
        err = err.__cause__
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _chat_row(path: str, number: int, record: dict[str, Any], columns: dict[str, str]) -> ChatRow:
    def where(key: str) -> str:
        return f"{path} row {number} column {columns[key]!r}"

    if "prompt" in columns:
        prompt = record[columns["prompt"]]
        if prompt is not None and not isinstance(prompt, str):
            raise ChatDataError(f"{where('prompt')}: prompt must be a string, got {_kind(prompt)}")
        if prompt is None or not prompt.strip():
            raise ChatDataError(f"{where('prompt')}: empty prompt")
        messages: tuple[tuple[str, str], ...] = (("user", prompt),)
    else:
        messages = _messages(record[columns["messages"]], where("messages"))
    gold = _optional_text(record, columns, "gold", where)
    context = _optional_text(record, columns, "context", where)
    return ChatRow(row=number, messages=messages, gold=gold, context=context or None)  # an empty context: none


def _optional_text(
    record: dict[str, Any], columns: dict[str, str], key: str, where: Callable[[str], str]
) -> str | None:
    value = record[columns[key]] if key in columns else None
    if value is not None and not isinstance(value, str):
        raise ChatDataError(f"{where(key)}: {key} must be a string or null, got {_kind(value)}")
    return value


def _messages(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not value:
        got = "an empty list" if isinstance(value, list) else _kind(value)
        raise ChatDataError(f"{where}: expected a non-empty list of turns, got {got}")
    turns = []
    for index, turn in enumerate(value):
        at = f"{where} turn {index}"
        if not isinstance(turn, Mapping):
            raise ChatDataError(f"{at}: expected a mapping with 'role' and 'content', got {_kind(turn)}")
        role, content = turn.get("role"), turn.get("content")
        if not isinstance(role, str) or role not in ROLES:
            raise ChatDataError(f"{at}: role {role!r} is not one of {list(ROLES)}")
        if role == "system" and index > 0:
            raise ChatDataError(f"{at}: a system turn may only come first")
        if not isinstance(content, str):
            raise ChatDataError(f"{at}: content must be a string, got {_kind(content)}")
        turns.append((role, content))
    last = len(turns) - 1
    if turns[last][0] != "user":
        raise ChatDataError(f"{where} turn {last}: the last turn must be a user turn, got role {turns[last][0]!r}")
    if not turns[last][1].strip():
        raise ChatDataError(f"{where} turn {last}: empty user turn")
    return tuple(turns)
