"""Training directly on a task's in-context examples (`inputs: demonstrations`, the paper's
H4 baseline), the gold answer as a completion, and a records file's held-out share."""

import json
from pathlib import Path

import pytest

from cdscale.build_targets import TargetBuilder
from cdscale.config import ConfigError, load_config, resolve_stages
from cdscale.inputs import build_tasks, sample_splits
from cdscale.tasks import Example, build_task, is_held_out

LABELS = Path(__file__).resolve().parent.parent / "configs" / "data" / "labels"


def _records(path: Path, pairs) -> Path:
    path.write_text("".join(json.dumps({"input": i, "gold": g}) + "\n" for i, g in pairs))
    return path


def _config(demonstrations: Path, records: Path, *extra):
    options = (
        f"{{path: {records}, demonstrations_path: {demonstrations}, "
        "teacher_template: '{demonstrations}Q: {input}'}"
    )
    stages = (
        "stages=[{operations: [{name: gd, inputs: demonstrations, targets: gold, "
        f"task: {{name: records, options: {options}}}}}]}}]"
    )
    return load_config(None, ["data.num_train=256", "data.num_eval=20", stages, *extra])


def test_an_operation_with_inputs_demonstrations_trains_on_the_examples_only(tmp_path):
    records = _records(tmp_path / "qa.jsonl", [(f"question {i}", str(i)) for i in range(400)])
    shown = _records(tmp_path / "shown.jsonl", [(f"example {i}", str(i)) for i in range(4)])
    cfg = _config(shown, records)
    stages = resolve_stages(cfg)
    eval_sets, rounds = sample_splits(cfg, stages, build_tasks(stages))
    assert len(rounds[0]["gd"]) == 256 and {x.input for x in rounds[0]["gd"]} == {f"example {i}" for i in range(4)}
    assert all(x.input.startswith("question ") for x in eval_sets["gd"])  # evaluated on the task's own D


def test_examples_that_are_also_evaluation_inputs_are_refused(tmp_path):
    """An examples file that repeats questions of the records file: training on the examples
    would train on the evaluation."""
    records = _records(tmp_path / "qa.jsonl", [(f"question {i}", str(i)) for i in range(400)])
    cfg = _config(records, records)
    with pytest.raises(
        ConfigError,
        match=r"num_train \(gd\): in-context examples \(the task.s demonstrations\) "
        r"are also evaluation inputs: \[.question ",
    ):
        sample_splits(cfg, resolve_stages(cfg), build_tasks(resolve_stages(cfg)))


def test_a_task_without_fixed_examples_says_so():
    cfg = load_config(None, ["stages=[{operations: [{name: gd, inputs: demonstrations, targets: gold}]}]"])
    with pytest.raises(ConfigError, match="task 'addition' has no fixed in-context examples"):
        sample_splits(cfg, resolve_stages(cfg), build_tasks(resolve_stages(cfg)))


def test_the_gold_completion_is_written_as_the_examples_write_it(tmp_path, smollm2_tokenizer):
    """After "Answer:" the gold carries its space, as in "Answer: seven" of the worked examples
    and in the model's own answers; after a prompt ending in a newline it does not."""
    records = _records(tmp_path / "qa.jsonl", [(f"word {i}", "seven") for i in range(300)])
    task = build_task("records", {"path": str(records)})
    x = Example(input="dog", gold="seven")
    assert task.gold_completion(x) == " seven"
    assert build_task("records", {"path": str(records), "student_template": "{input}\n"}).gold_completion(x) == "seven"
    assert task.gold_completion(Example(input="a synthetic input")) is None  # no gold: no target
    cfg = load_config(None, ["student.batch_size=1", "student.num_ranks=1"])
    [record], _ = TargetBuilder(cfg, smollm2_tokenizer).gold(task, [x], "gold")
    answer = smollm2_tokenizer.decode(record["input_ids"][record["answer_start"] :])
    assert answer.startswith(" seven")  # one token with its space, as the model writes it
    assert smollm2_tokenizer.decode(record["input_ids"]).startswith("Input: dog\nAnswer: seven")


def test_a_records_file_can_hold_out_a_larger_share():
    words = build_task("records", {"path": str(LABELS / "words.jsonl"), "held_out_per_mille": 500})
    held = [x for x in words.examples if is_held_out(x, words.held_out_per_mille)]
    assert 0.35 < len(held) / len(words.examples) < 0.65
    assert build_task("records", {"path": str(LABELS / "words.jsonl")}).held_out_per_mille == 100
    with pytest.raises(ConfigError, match=r"task.options: held_out_per_mille: must be in \[1, 999\], got 1000"):
        build_task("records", {"path": str(LABELS / "words.jsonl"), "held_out_per_mille": 1000})


def test_the_label_data_keeps_its_convention():
    """Every word has its kind's label; the k examples are k/4 per kind, each smaller set
    inside the larger one, and none of them is a word of the records file."""
    labels = {"animal": "seven", "fruit": "north", "vehicle": "paper", "clothing": "river"}
    rows = [json.loads(line) for line in (LABELS / "words.jsonl").read_text().splitlines()]
    assert len({r["input"] for r in rows}) == len(rows) == 225
    assert all(r["gold"] == labels[r["category"]] for r in rows)
    sets = {}
    for k in (4, 8, 16):
        shown = [json.loads(line) for line in (LABELS / f"examples_{k}.jsonl").read_text().splitlines()]
        assert all(r["gold"] == labels[r["category"]] for r in shown)
        assert sorted(r["category"] for r in shown) == sorted(list(labels) * (k // 4))
        sets[k] = {r["input"] for r in shown}
    assert sets[4] < sets[8] < sets[16] and not sets[16] & {r["input"] for r in rows}


def test_in_context_examples_are_checked_against_the_templates(tmp_path):
    records = tmp_path / "qa.jsonl"
    records.write_text(json.dumps({"input": "dog", "gold": "seven", "kind": "animal"}) + "\n")
    shown = _records(tmp_path / "shown.jsonl", [("cat", "seven")])  # no "kind" field
    with pytest.raises(ConfigError, match=r"shown.jsonl line 1: missing field\(s\) \['kind'\] that a template uses"):
        build_task(
            "records",
            {
                "path": str(records),
                "demonstrations_path": str(shown),
                "student_template": "{kind}: {input}",
                "teacher_template": "{demonstrations}{kind}: {input}",
            },
        )
    with pytest.raises(ConfigError, match="held_out_per_mille: must be in"):
        build_task("records", {"path": str(records), "held_out_per_mille": True})
