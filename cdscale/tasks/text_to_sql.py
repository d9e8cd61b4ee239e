"""Text-to-SQL on a small SQLite database (paper H4/H5: internalizing concrete examples).

A records task (`cdscale/tasks/records.py`: questions as `input`, SQL as `gold`, in-context
examples from `demonstrations_path`) with two additions:
- the prompts' `{context}` is the database's schema, the CREATE TABLE statements of its
  SQL script, so teacher and student both see it and only the examples differ;
- an answer is scored by running it: correct when it returns the same rows as the gold
  query (in the same order only when the gold query has an ORDER BY).

    task: {name: text_to_sql, options: {database: configs/data/sql/shop.sql,
           path: configs/data/sql/shop.jsonl, demonstrations_path: configs/data/sql/shop_examples.jsonl}}
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

from cdscale.tasks import Example, register_task
from cdscale.tasks.records import RecordError, Records

# What a scored query may do: read. Anything else (a write, a PRAGMA that lifts a guard, an
# ATTACH) is refused by sqlite, so no answer can change the rows a later one is scored on.
_READ_ONLY = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
QUERY_SECONDS = 2.0  # a predicted query that runs longer (a runaway recursion, a huge cross join) is wrong


def load_database(script: str | Path) -> tuple[sqlite3.Connection, str]:
    """The database built in memory from its SQL script, read-only from then on, and its
    schema (the CREATE TABLE statements, as the prompts show it)."""
    script = Path(script)
    if not script.is_file():
        raise RecordError(f"database: {script} does not exist")
    connection = sqlite3.connect(":memory:")
    try:
        connection.executescript(script.read_text())
    except sqlite3.Error as err:
        raise RecordError(f"database: {script} does not load: {err}") from None
    schema = "\n\n".join(
        sql + ";" for (sql,) in connection.execute("SELECT sql FROM sqlite_master WHERE type = 'table'")
    )
    if not schema:
        raise RecordError(f"database: {script} has no CREATE TABLE statement")
    connection.set_authorizer(lambda action, *_: sqlite3.SQLITE_OK if action in _READ_ONLY else sqlite3.SQLITE_DENY)
    return connection, schema


def run_query(connection: sqlite3.Connection, sql: str) -> list[tuple[Any, ...]] | None:
    """The rows a query returns, or None when it is not one read-only statement that ends
    within QUERY_SECONDS."""
    deadline = time.monotonic() + QUERY_SECONDS
    connection.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
    try:
        return connection.execute(sql.rstrip().rstrip(";")).fetchall()
    except (sqlite3.Error, sqlite3.Warning):  # not SQL, refused, interrupted, or several statements
        return None
    finally:
        connection.set_progress_handler(None, 0)


def same_rows(predicted: list[tuple[Any, ...]], gold: list[tuple[Any, ...]], ordered: bool) -> bool:
    """Equal results: floats rounded (an AVG may differ in the last bits between two correct
    queries), and compared as multisets unless the order is part of the answer."""

    def rounded(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        return [tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in rows]

    predicted, gold = rounded(predicted), rounded(gold)
    return predicted == gold if ordered else Counter(predicted) == Counter(gold)


@register_task("text_to_sql")
class TextToSql(Records):
    # A few dozen questions per database: half of them are kept for evaluation.
    held_out_per_mille = 500

    def __init__(
        self,
        database: str,
        path: str,
        teacher_template: str = "{context}\n\n{demonstrations}Question: {input}\nSQL:",
        student_template: str = "{context}\n\nQuestion: {input}\nSQL:",
        demonstration_template: str = "Question: {input}\nSQL: {gold}\n\n",
        **records_options: Any,
    ):
        self.connection, schema = load_database(database)
        super().__init__(
            path,
            context=schema,
            teacher_template=teacher_template,
            student_template=student_template,
            demonstration_template=demonstration_template,
            **records_options,
        )
        for x in self.examples + self.demonstrations:
            if run_query(self.connection, x.gold) is None:
                raise RecordError(f"{path}: the gold SQL of {x.input!r} does not run on {database}")

    def score(self, x: Example, answer: str | None) -> float:
        predicted = None if answer is None else run_query(self.connection, answer)
        if predicted is None:
            return 0.0
        gold = run_query(self.connection, x.gold)
        return float(gold is not None and same_rows(predicted, gold, ordered="ORDER BY" in x.gold.upper()))
