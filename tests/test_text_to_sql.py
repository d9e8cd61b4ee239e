"""The text-to-SQL task: prompts that differ only by the examples, scoring by execution, and the
held-out half of the questions."""

import random
from pathlib import Path

import pytest

from cdscale.config import ConfigError
from cdscale.tasks import build_task, is_held_out, sample_where

SQL_DATA = Path(__file__).parent.parent / "configs" / "data" / "sql"


def shop_task(**options):
    return build_task(
        "text_to_sql",
        {
            "database": str(SQL_DATA / "shop.sql"),
            "path": str(SQL_DATA / "shop.jsonl"),
            "demonstrations_path": str(SQL_DATA / "shop_examples.jsonl"),
            **options,
        },
    )


def test_both_prompts_show_the_schema_and_only_the_teachers_shows_the_examples():
    task = shop_task(demonstrations_per_prompt=4)
    x = task.examples[0]
    teacher, student = task.teacher_prompt(x), task.student_prompt(x)
    assert "CREATE TABLE customers" in student and "CREATE TABLE order_items" in student
    assert "INSERT" not in teacher  # the rows are not part of the schema
    assert teacher.endswith(f"Question: {x.input}\nSQL:") and student.endswith(f"Question: {x.input}\nSQL:")
    assert teacher.count("\nSQL: ") == 4 and "\nSQL: " not in student


def test_a_query_is_right_when_it_returns_the_gold_rows():
    task = shop_task()
    x = next(e for e in task.examples if e.gold == "SELECT COUNT(*) FROM customers")
    assert task.score(x, x.gold) == 1.0
    assert task.score(x, "select count(customer_id) from customers;") == 1.0  # other text, same rows
    assert task.score(x, "SELECT COUNT(*) FROM products") == 0.0
    assert task.score(x, "How many customers") == 0.0  # not SQL
    assert task.score(x, None) == 0.0


def test_row_order_counts_only_when_the_gold_query_orders():
    task = shop_task()
    ordered = next(e for e in task.examples if "ORDER BY" in e.gold.upper() and "LIMIT" not in e.gold.upper())
    reversed_query = ordered.gold.replace(" DESC", "") if " DESC" in ordered.gold else ordered.gold + " DESC"
    assert task.score(ordered, ordered.gold) == 1.0 and task.score(ordered, reversed_query) == 0.0
    unordered = next(
        e for e in task.examples if e.gold.startswith("SELECT name FROM") and "ORDER BY" not in e.gold.upper()
    )
    assert task.score(unordered, unordered.gold + " ORDER BY name DESC") == 1.0
    assert (
        task.score(unordered, unordered.gold + " UNION ALL " + unordered.gold) == 0.0
    )  # each row twice: not the same rows


def test_a_predicted_write_scores_zero_and_changes_nothing():
    task = shop_task()
    x = next(e for e in task.examples if e.gold == "SELECT COUNT(*) FROM customers")
    customers = task.connection.execute(x.gold).fetchall()
    for answer in (
        "PRAGMA query_only = OFF",
        "DELETE FROM customers",
        "SELECT 1; DROP TABLE customers",
        "ATTACH DATABASE ':memory:' AS other",
    ):
        assert task.score(x, answer) == 0.0, answer
    assert task.connection.execute(x.gold).fetchall() == customers and customers[0][0] > 0


def test_a_query_that_runs_away_scores_zero_within_the_time_limit(monkeypatch):
    import time

    from cdscale.tasks import text_to_sql

    monkeypatch.setattr(text_to_sql, "QUERY_SECONDS", 0.2)
    task = shop_task()
    x = task.examples[0]
    start = time.monotonic()
    assert (
        task.score(x, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT COUNT(*) FROM n") == 0.0
    )
    assert time.monotonic() - start < 5.0
    assert task.score(x, x.gold) == 1.0  # the limit applies per query


def test_about_half_the_questions_are_held_out_and_evaluation_draws_exactly_those():
    task = shop_task()
    held = [x for x in task.examples if is_held_out(x, task.held_out_per_mille)]
    assert 0.3 < len(held) / len(task.examples) < 0.8  # 32 of shop's 45
    evals = sample_where(task, len(held), random.Random(0), held_out=True, distinct=True)
    assert {x.input for x in evals} == {x.input for x in held}


def test_a_gold_query_that_fails_is_refused_with_the_file_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "How many?", "gold": "SELECT COUNT(*) FROM no_such_table"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl: the gold SQL of 'How many\?' does not run on .*shop.sql"):
        shop_task(path=str(bad))
