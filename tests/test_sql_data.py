"""The hand-written text-to-SQL data: every database script loads, and every question/SQL pair
(questions file and in-context examples file, both records: `input` question, `gold` SQL) is
well-formed, unique, runs on its database and returns a non-empty answer."""

import json
import sqlite3
from pathlib import Path

import pytest

SQL_DATA = Path(__file__).parent.parent / "configs" / "data" / "sql"
DATABASES = ["library", "shop", "school"]


def build(name: str) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.executescript((SQL_DATA / f"{name}.sql").read_text())
    return conn


def load_pairs(name: str) -> list[dict]:
    lines = [
        *(SQL_DATA / f"{name}.jsonl").read_text().splitlines(),
        *(SQL_DATA / f"{name}_examples.jsonl").read_text().splitlines(),
    ]
    return [json.loads(line) for line in lines]


def fraction_with(pairs: list[dict], keyword: str) -> float:
    return sum(keyword in pair["gold"].upper() for pair in pairs) / len(pairs)


@pytest.mark.parametrize("name", DATABASES)
def test_database_script_loads_with_consistent_foreign_keys(name):
    conn = build(name)
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


@pytest.mark.parametrize("name", DATABASES)
def test_pairs_are_well_formed_and_unique(name):
    pairs = load_pairs(name)
    assert len(pairs) >= 53 and len((SQL_DATA / f"{name}_examples.jsonl").read_text().splitlines()) == 8
    for pair in pairs:
        assert isinstance(pair, dict) and set(pair) == {"input", "gold"}, pair
        assert isinstance(pair["input"], str) and pair["input"].strip(), pair
        assert isinstance(pair["gold"], str) and not pair["gold"].rstrip().endswith(";"), pair
    assert len({pair["input"] for pair in pairs}) == len(pairs), "duplicate question"
    assert len({pair["gold"] for pair in pairs}) == len(pairs), "duplicate SQL"


@pytest.mark.parametrize("name", DATABASES)
def test_every_query_runs_and_returns_a_real_answer(name):
    conn = build(name)
    for pair in load_pairs(name):
        rows = conn.execute(pair["gold"]).fetchall()
        assert rows, f"no rows: {pair['input']}"
        # An aggregate over an empty selection returns a row of NULLs: still no answer.
        assert all(any(value is not None for value in row) for row in rows), f"all-NULL row: {pair['input']}"


@pytest.mark.parametrize("name", DATABASES)
def test_pairs_are_not_all_single_table_lookups(name):
    pairs = load_pairs(name)
    assert fraction_with(pairs, "JOIN") >= 0.30
    assert fraction_with(pairs, "GROUP BY") >= 0.20
