"""metrics.jsonl is always closed, and a restart from the last commit (a trainer restart, or
`--resume`) drops the undone attempt's events so that TensorBoard's train steps do not drift."""

import json

import pytest

from cdscale.metrics import MetricsLog, committed_lines


def _events(path):
    return [json.loads(line)["event"] for line in path.read_text().splitlines()]


def _write(log, *events):
    for event in events:
        log.write(event=event, round=0, loss=1.0, lr=1e-3, token_accuracy=0.5)


def _train_steps_logged(monkeypatch, log) -> list[int]:
    """The TensorBoard steps of the train/loss points `log` writes from now on."""
    steps = []
    add_scalar = log.tensorboard.add_scalar

    def recording(tag, value, step):
        if tag == "train/loss":
            steps.append(step)
        add_scalar(tag, value, step)

    monkeypatch.setattr(log.tensorboard, "add_scalar", recording)
    return steps


def test_closed_on_leaving_the_with_block_even_on_an_error_and_close_is_idempotent(tmp_path):
    with pytest.raises(RuntimeError):
        with MetricsLog(tmp_path) as log:
            file = log.file
            log.write(event="placement")
            raise RuntimeError("the run failed")
    assert file.closed
    log.close()  # again: nothing happens
    assert _events(tmp_path / "metrics.jsonl") == ["placement"]


def test_rollback_keeps_the_events_up_to_the_last_commit(tmp_path, monkeypatch):
    with MetricsLog(tmp_path) as log:
        _write(log, "round_start", "train", "train", "commit", "train", "commit", "train", "train", "eval")
        assert log.train_steps == 5
        assert log.rollback("0001-round0-step3") == 3  # commit events that name no state: the last
        assert _events(tmp_path / "metrics.jsonl") == [
            "round_start",
            "train",
            "train",
            "commit",
            "train",
            "commit",
            "rollback",
        ]
        assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["dropped"] == 3
        assert log.train_steps == 3  # the train events kept
        steps = _train_steps_logged(monkeypatch, log)
        _write(log, "train", "train")
    assert steps == [3, 4]  # the retry's curve continues the committed one
    assert _events(tmp_path / "metrics.jsonl")[-2:] == ["train", "train"]


def test_without_a_commit_the_events_before_the_first_train_event_are_kept(tmp_path):
    with MetricsLog(tmp_path) as log:
        _write(log, "placement", "eval", "round_start", "train", "train", "eval")
        assert log.rollback(None) == 3
        assert log.train_steps == 0
    assert _events(tmp_path / "metrics.jsonl") == ["placement", "eval", "round_start", "rollback"]


def test_bad_lines_are_kept_as_they_are_before_the_cut_and_dropped_after_it():
    good = [json.dumps({"event": e}) + "\n" for e in ("train", "commit", "train")]
    lines = ["not json\n", good[0], "[1, 2]\n", good[1], '{"event": "tra\n', good[2], '{"event": "tr']
    assert committed_lines(lines, "0000-round0-step1") == lines[:4]
    assert committed_lines(['{"ev\n', good[0]]) == ['{"ev\n']
    assert committed_lines(["not json\n"]) == ["not json\n"]
    assert committed_lines([]) == []


def test_rollback_goes_to_the_commit_of_the_state_the_run_goes_on_from(tmp_path):
    """A commit event is written before its state folder is renamed into place: a crash in
    between leaves an event for a state that never became whole, which a resume drops."""
    with MetricsLog(tmp_path) as log:
        log.write(event="train", round=0, loss=1.0)
        log.write(event="commit", state="0000-round0-step1", round=0, step=1)
        log.write(event="train", round=0, loss=1.0)
        log.write(event="commit", state="0001-round0-step2", round=0, step=2)  # its rename never happened
        log.write(event="train", round=0, loss=1.0)
        assert log.rollback("0000-round0-step1") == 3
        assert log.train_steps == 1
    with MetricsLog(tmp_path, append=True, state=None) as log:  # no whole state: from the beginning
        assert log.train_steps == 0
    assert _events(tmp_path / "metrics.jsonl") == ["rollback"]


def test_resuming_rolls_back_bad_lines_included(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(tmp_path) as log:
        _write(log, "train", "commit", "train", "train")
    train, commit, undone, _, _ = path.read_bytes().split(b"\n")
    # A line that is not JSON (nor UTF-8) before the commit, and one cut short by a crash at the end.
    path.write_bytes(b"\n".join([train, b"\xff not json", commit, undone, undone, b'{"event": "train", "lo']))
    with MetricsLog(tmp_path, append=True, state="0000-round0-step1") as log:
        assert log.train_steps == 1
        steps = _train_steps_logged(monkeypatch, log)
        _write(log, "train")
    assert steps == [1]
    lines = path.read_bytes().split(b"\n")
    assert lines[:3] == [train, b"\xff not json", commit]  # kept byte for byte
    assert [json.loads(line)["event"] for line in lines[3:-1]] == ["rollback", "train"]
    assert json.loads(lines[3])["dropped"] == 3


def test_a_new_run_starts_afresh_and_resuming_without_a_file_starts_one(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"event": "train"}\n')
    with MetricsLog(tmp_path):
        pass
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    other = tmp_path / "other"
    other.mkdir()
    with MetricsLog(other, append=True) as log:
        assert log.train_steps == 0
    assert (other / "metrics.jsonl").read_text() == ""
