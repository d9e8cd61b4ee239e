"""Exact match of an addition run's evaluation, split by the operands' digit counts.

    python docs/results/addition_by_length.py runs/addition/eval/addition/student_after_round_0.jsonl

Reads one `eval/OPERATION/NAME.jsonl` file of a run (one scored problem per line) and prints,
for each pair of operand lengths, the number of problems and the accuracy in %. (`cdscale
report` shows the same for a run's teacher, before and after.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cdscale.report import by_length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_file", type=Path)
    rows = [json.loads(line) for line in parser.parse_args().eval_file.read_text().splitlines()]
    groups = by_length(rows)
    if groups is None:
        raise SystemExit(f"{parser.parse_args().eval_file}: not every input is a sum of two spaced numbers")
    print("| digits | problems | accuracy % |\n| --- | --- | --- |")
    for (shorter, longer), scores in groups.items():
        print(f"| {shorter}+{longer} | {len(scores)} | {100 * sum(scores) / len(scores):.1f} |")
    print(f"| all | {len(rows)} | {100 * sum(r['score'] for r in rows) / len(rows):.1f} |")


if __name__ == "__main__":
    main()
