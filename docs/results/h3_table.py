"""The task-id table of docs/results.md from the runs' summary.json files.

    python docs/results/h3_table.py runs/h3_naive runs/h3_mixed ...

Columns are means over the four operations of a stage: stage-1 operations are named a_*,
stage-2 ones o_* (configs/h3_*.yaml)."""

import json
import sys

print(
    "| inputs | teacher | student before (new ids) | after stage 1: correct id "
    "| after stage 2: new correct id | after stage 2: old (wrong) id |"
)
print("| --- | --- | --- | --- | --- | --- |")


def mean(d, prefix):
    """Mean accuracy in % over the operations whose names start with prefix."""
    return (
        100
        * sum(m["accuracy"] for op, m in d.items() if op.startswith(prefix))
        / sum(op.startswith(prefix) for op in d)
    )


for run in sys.argv[1:]:
    s = json.load(open(f"{run}/summary.json"))
    print(
        f"| {s['run_dir'].rsplit('/', 1)[1]} | {mean(s['teacher'], 'a_'):.1f} "
        f"| {mean(s['student_before'], 'o_'):.1f} | "
        f"{mean(s['after_stage']['associate'], 'a_'):.1f} | {mean(s['after_stage']['overwrite'], 'o_'):.1f} | "
        f"{mean(s['after_stage']['overwrite'], 'a_'):.1f} |"
    )
