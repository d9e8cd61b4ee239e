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

import re
import sqlite3
from pathlib import Path
from typing import Any

from cdscale.tasks import Example, register_task
from cdscale.tasks.records import Records, RecordError

_CREATE_TABLE = re.compile(r"CREATE TABLE .*?\n\);", re.DOTALL | re.IGNORECASE)


def load_database(script: str | Path) -> tuple[sqlite3.Connection, str]:
    """The database built in memory from its SQL script, and its schema (the CREATE TABLE
    statements, as the prompts show it)."""
    script = Path(script)
    if not script.is_file():
        raise RecordError(f"database: {script} does not exist")
    text = script.read_text()
    connection = sqlite3.connect(":memory:", check_same_thread=False)
    try:
        connection.executescript(text)
    except sqlite3.Error as err:
        raise RecordError(f"database: {script} does not load: {err}") from None
    connection.execute("PRAGMA query_only = ON")  # a predicted DELETE or DROP must not change later answers
    schema = "\n\n".join(_CREATE_TABLE.findall(text))
    if not schema:
        raise RecordError(f"database: {script} has no CREATE TABLE statement")
    return connection, schema


def result_key(rows: list[tuple[Any, ...]], ordered: bool) -> list[tuple[Any, ...]]:
    """Rows in a comparable form: floats rounded (an AVG may differ in the last bits between
    two correct queries), and sorted unless the order is part of the answer."""
    rows = [tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in rows]
    return rows if ordered else sorted(rows, key=repr)


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
            path, context=schema, teacher_template=teacher_template, student_template=student_template,
            demonstration_template=demonstration_template, **records_options,
        )
        for x in self.examples + self.demonstrations:
            try:
                self.connection.execute(x.gold)
            except sqlite3.Error as err:
                raise RecordError(f"{path}: the gold SQL of {x.input!r} fails on {database}: {err}") from None

    def score(self, x: Example, answer: str | None) -> float:
        if answer is None:
            return 0.0
        try:
            predicted = self.connection.execute(answer.rstrip().rstrip(";")).fetchall()
        except (sqlite3.Error, sqlite3.Warning):  # not SQL, or more than one statement
            return 0.0
        ordered = "ORDER BY" in x.gold.upper()
        gold = self.connection.execute(x.gold).fetchall()
        return float(result_key(predicted, ordered) == result_key(gold, ordered))
