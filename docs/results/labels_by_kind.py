"""Accuracy of word-label runs per kind of word, and the answers given.

    python docs/results/labels_by_kind.py runs/labels_examples runs/labels_gold ...

For each run, reads `eval/*/NAME.jsonl` (NAME: teacher, student_after_round_0) and the kinds
in configs/data/labels/words.jsonl, and prints the accuracy in % per kind and the most
common answers.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

WORDS = Path(__file__).resolve().parents[2] / "configs" / "data" / "labels" / "words.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+")
    kinds = {r["input"]: r["category"] for r in map(json.loads, WORDS.read_text().splitlines())}
    names = sorted(set(kinds.values()))
    print(f"| run | who | {' | '.join(names)} | most common answers |\n|{' --- |' * (len(names) + 3)}")
    for run in parser.parse_args().run_dirs:
        for who in ("teacher", "student_after_round_0"):
            [path] = sorted(run.glob(f"eval/*/{who}.jsonl"))
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            scores: dict[str, list[float]] = defaultdict(list)
            for row in rows:
                scores[kinds[row["input"]]].append(row["score"])
            answers = ", ".join(f"{a} {n}" for a, n in Counter(row["answer"] for row in rows).most_common(4))
            cells = " | ".join(f"{100 * sum(scores[k]) / len(scores[k]):.0f}" for k in names)
            print(f"| {run.name} | {who.split('_after')[0]} | {cells} | {answers} |")


if __name__ == "__main__":
    main()
