"""Exact match of an addition run's evaluation, split by the operands' digit counts.

    python docs/results/addition_by_length.py runs/addition/eval/addition/student_after_round_0.jsonl

Reads one `eval/OPERATION/NAME.jsonl` file of a run (one scored problem per line) and prints,
for each pair of operand lengths, the number of problems and the accuracy in %.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def digit_counts(problem: str) -> tuple[int, int]:
    """(shorter, longer) operand length of a spaced problem such as '2 9 + 5 7 1'."""
    a, b = problem.split(" + ")
    return tuple(sorted((len(a.split()), len(b.split()))))  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_file", type=Path)
    rows = [json.loads(line) for line in parser.parse_args().eval_file.read_text().splitlines()]
    scores: dict[tuple[int, int], list[float]] = defaultdict(list)
    for row in rows:
        scores[digit_counts(row["input"])].append(row["score"])
    print("| digits | problems | accuracy % |\n| --- | --- | --- |")
    for key in sorted(scores):
        print(f"| {key[0]}+{key[1]} | {len(scores[key])} | {100 * sum(scores[key]) / len(scores[key]):.1f} |")
    print(f"| all | {len(rows)} | {100 * sum(r['score'] for r in rows) / len(rows):.1f} |")


if __name__ == "__main__":
    main()
