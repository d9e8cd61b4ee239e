"""How far a text-to-SQL run's answers got: per database and role, how many start with SELECT,
how many run on the database without an error, and how many return the gold rows.

    python docs/results/sql_answers.py runs/sql_examples

Reads every `eval/DATABASE/ROLE.jsonl` of the run; the database script is configs/data/sql/DATABASE.sql.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cdscale.tasks.text_to_sql import load_database, run_query

SQL_DATA = Path(__file__).resolve().parents[2] / "configs" / "data" / "sql"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    print("| database | role | answers | start with SELECT | run | right |\n| --- | --- | --- | --- | --- | --- |")
    for folder in sorted((parser.parse_args().run_dir / "eval").iterdir()):
        connection, _ = load_database(SQL_DATA / f"{folder.name}.sql")
        for path in sorted(folder.glob("*.jsonl")):
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            answers = [row["answer"] or "" for row in rows]
            select = sum(a.lstrip().upper().startswith("SELECT") for a in answers)
            ok = sum(run_query(connection, a) is not None for a in answers)
            right = int(sum(row["score"] for row in rows))
            print(f"| {folder.name} | {path.stem} | {len(rows)} | {select} | {ok} | {right} |")


if __name__ == "__main__":
    main()
