"""`cdscale report` refuses a folder that is not a finished run (its output on a real run is
checked in tests/test_stack.py)."""

import pytest

from cdscale.cli import main


def test_report_of_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no summary.json and no committed state" in capsys.readouterr().err


def _run_dir(root, name, after, validation=None, curve=None):
    """A run folder as a finished run leaves it, with made-up results: summary.json, metrics.jsonl,
    config.yaml and the evaluation files of one addition operation."""
    import json

    run = root / name
    (run / "eval" / "addition").mkdir(parents=True)
    problems = ["1 + 2", "3 4 + 5", "1 2 + 3 4", "9 9 9 + 1 1 1"]

    def scored(scores):
        return "".join(json.dumps({"input": p, "score": s}) + "\n" for p, s in zip(problems, scores))

    for label, scores in (("teacher", [1, 1, 1, 1]), ("student_before", [0, 0, 0, 0])):
        (run / "eval" / "addition" / f"{label}.jsonl").write_text(scored(scores))
    (run / "eval" / "addition" / "student_after_round_0.jsonl").write_text(scored([1, 1, 1, 0]))
    (run / "eval" / "addition" / "student_after_round_1.jsonl").write_text(scored(after))
    metrics = {"n": 4, "tokens_per_answer": 3.0}
    summary = {
        "teacher": {"addition": {**metrics, "accuracy": 1.0}},
        "student_before": {"addition": {**metrics, "accuracy": 0.0}},
        "student_after": {"addition": {**metrics, "accuracy": sum(after) / 4}},
        "after_stage": {"main": {"addition": {**metrics, "accuracy": sum(after) / 4}}},
    }
    if validation:
        summary["validation"] = {"addition": validation}
    if curve:
        summary["curve"] = {"addition": curve}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "metrics.jsonl").write_text(json.dumps({"time": 0, "event": "train", "round": 0, "step": 1, "loss": 1.0}))
    (run / "config.yaml").write_text("student:\n  batch_size: 8\n")
    return run


def test_sums_are_grouped_by_operand_lengths_and_other_inputs_are_not():
    from cdscale.report import by_length, digit_counts

    assert digit_counts("2 9 + 5 7 1") == (2, 3) and digit_counts("SELECT 1") is None
    rows = [{"input": "1 + 2", "score": 1}, {"input": "3 4 + 5", "score": 0}, {"input": "5 + 6 7", "score": 1}]
    assert by_length(rows) == {(1, 1): [1], (1, 2): [0, 1]}
    assert by_length([*rows, {"input": "Bonjour", "score": 1}]) is None


@pytest.mark.parametrize("key", ["validation", "curve"])
def test_report_draws_the_runs_side_by_side_by_length_and_a_learning_curve(tmp_path, key):
    from cdscale.cli import main

    curve = [  # `student.until_accuracy`'s checks, or `eval.every_refreshes`' evaluations
        {"round": 0, "step": 20, "epochs": 3, "accuracy": 0.5},
        {"round": 0, "step": 10, "epochs": 2, "accuracy": 0.25},
    ]
    distilled = _run_dir(tmp_path, "distilled", after=[1, 1, 1, 0], **{key: curve})
    baseline = _run_dir(tmp_path, "baseline", after=[1, 0, 0, 0])
    assert main(["report", str(distilled), str(baseline), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    # Accuracy by lengths, from the last round's evaluation (round 1), teacher and before beside it.
    assert "| distilled | addition | 3+3 | 1 | 100.0 | 0.0 | 0.0 |" in text
    assert "| baseline | addition | 1+2 | 1 | 100.0 | 0.0 | 0.0 |" in text
    assert "| distilled | addition | 100.0 | 0.0 | 75.0 |" in text
    for figure in ("accuracy.png", "by_length.png", "learning_curve.png", "loss.png"):
        assert (tmp_path / "out" / figure).stat().st_size > 1000 and f"({figure})" in text


def test_a_damaged_evaluation_file_is_left_out_of_the_length_table_with_a_warning(tmp_path, caplog):
    from cdscale.report import length_results

    run = _run_dir(tmp_path, "distilled", after=[1, 1, 1, 0])
    (run / "eval" / "addition" / "student_before.jsonl").write_text('{"input": "1 + 2", "score": 0}\n{"inpu')
    (run / "eval" / "addition" / "teacher.jsonl").write_text('{"input": "1 + 1"}\n')  # no score
    assert set(length_results(run)["addition"]) == {"after"}
    assert "student_before.jsonl:2: not a JSON line" in caplog.text


def test_a_multi_round_run_gets_a_bar_after_each_intermediate_round():
    from cdscale.report import accuracy_bars

    def metrics(accuracy):
        return {"addition": {"n": 4, "accuracy": accuracy}}

    two_rounds = {"teacher": metrics(1.0), "student_before": metrics(0.0), "student_after": metrics(0.75)}
    one_round = {"teacher": metrics(1.0), "student_before": metrics(0.0), "student_after": metrics(0.5)}
    events = [
        {"event": "round_start", "round": 0, "stage": "main"},
        {"event": "eval", "operation": "addition", "name": "student_after_round_0", "accuracy": 0.25},
        {"event": "eval", "operation": "addition", "name": "student_after_round_0", "accuracy": 0.5},  # resumed
        {"event": "round_start", "round": 1, "stage": "main"},
        {"event": "eval", "operation": "addition", "name": "student_after_round_1", "accuracy": 0.75},
    ]
    labels, bars = accuracy_bars({"two": two_rounds, "one": one_round}, {"two": events, "one": events[:3]})
    assert labels == ["teacher", "before", "after round 0", "after"]
    assert bars == {"addition": {"two": [1.0, 0.0, 0.5, 0.75], "one": [1.0, 0.0, None, 0.5]}}


def test_a_curve_ends_at_the_accuracy_after_the_runs_last_round():
    from cdscale.report import learning_curves

    curve = [{"round": 0, "step": 20, "accuracy": 0.5}, {"round": 0, "step": 10, "accuracy": 0.25}]
    checks = [{"round": 0, "step": 30, "epochs": 3, "accuracy": 0.5}]
    summary = {"curve": {"add": curve}, "validation": {"add": checks}, "round_0": {"steps": 40}}
    summary["student_after"] = {"add": {"accuracy": 0.75}}
    assert learning_curves({"run": summary}, {"run": 8}) == [
        ("run: add (held-out)", "-", [80, 160, 320], [25.0, 50.0, 75.0]),
        ("run: add (validation)", "--", [240], [50.0]),
    ]
