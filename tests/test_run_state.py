"""Committed run state and data shards: a failed save never replaces the last good state,
and a changed or truncated shard is refused with the file named."""

import json
import os

import pytest

from cdscale.checkpoint import commit_state, load_latest_state, read_shard, write_shard
from cdscale.config import RunDirDamaged


def save_files(content: str):
    def save(folder):
        (folder / "rank0.bin").write_text(content)

    return save


def test_commit_points_latest_at_the_new_state_and_removes_the_old(tmp_path):
    assert load_latest_state(tmp_path) is None
    first = commit_state(tmp_path, {"round": 0, "step": 5}, save_files("a"))
    second = commit_state(tmp_path, {"round": 1, "step": 0}, save_files("b"))
    folder, progress = load_latest_state(tmp_path)
    assert folder == second and progress["round"] == 1 and progress["seq"] == 1
    assert (folder / "rank0.bin").read_text() == "b" and not first.exists()


def test_a_save_that_fails_midway_leaves_the_previous_state_latest(tmp_path):
    good = commit_state(tmp_path, {"round": 0, "step": 3}, save_files("good"))

    def crash(folder):
        (folder / "rank0.bin").write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        commit_state(tmp_path, {"round": 0, "step": 7}, crash)
    folder, progress = load_latest_state(tmp_path)
    assert folder == good and progress["step"] == 3 and (folder / "rank0.bin").read_text() == "good"
    # The next commit clears the leftover of the crashed save.
    commit_state(tmp_path, {"round": 0, "step": 7}, save_files("next"))
    assert [p.name for p in (tmp_path / "state").iterdir() if p.is_dir()] == ["0002-round0-step7"]


def test_latest_pointing_to_a_missing_state_is_a_clear_error(tmp_path):
    folder = commit_state(tmp_path, {"round": 0, "step": 1}, save_files("x"))
    (folder / "progress.json").unlink()
    with pytest.raises(RunDirDamaged, match="progress.json"):
        load_latest_state(tmp_path)


class Killed(BaseException):
    """What kill -9 leaves: the commit stops between two filesystem steps, nothing runs after."""


def _commit(run_dir, log, step, kill):
    def save(folder):
        kill("save")
        (folder / "rank0.bin").write_text(f"step {step}")

    def record(name):
        kill("commit event")
        log.write(event="commit", state=name, round=0, step=step)

    log.write(event="train", round=0, loss=1.0)
    return commit_state(run_dir, {"round": 0, "step": step}, save, before_rename=record)


def test_a_kill_at_any_step_of_a_commit_resumes_from_a_whole_state(tmp_path, monkeypatch):
    """Kill the second of two commits at each of its filesystem steps in turn; each time the
    resume finds a whole state (the first or the second), metrics.jsonl rolls back to that
    state's commit, and the next commit succeeds (no leftover blocks it)."""
    import os
    import shutil

    from cdscale.metrics import MetricsLog

    steps, kill_at = [], [None]

    def kill(what):
        steps.append(what)
        if len(steps) == kill_at[0]:
            raise Killed(what)

    def counted(name, fn):
        def step(*args, **kwargs):
            kill(name)
            return fn(*args, **kwargs)

        return step

    for owner, name in ((os, "replace"), (os, "fsync"), (os, "mkdir"), (shutil, "rmtree")):
        monkeypatch.setattr(owner, name, counted(name, getattr(owner, name)))

    def attempt(run_dir, k):
        run_dir.mkdir()
        with MetricsLog(run_dir) as log:
            _commit(run_dir, log, 1, lambda what: None)
            steps.clear()
            kill_at[0] = k
            try:
                _commit(run_dir, log, 2, kill)
            except Killed:
                pass
            finally:
                kill_at[0] = None

    attempt(tmp_path / "whole", None)
    total = len(steps)
    assert total >= 8, steps  # save, mkdir, fsyncs, the event, the renames, the cleanup
    for k in range(1, total + 1):
        run_dir = tmp_path / f"kill-{k}"
        attempt(run_dir, k)
        folder, progress = load_latest_state(run_dir)
        assert (folder / "rank0.bin").read_text() == f"step {progress['step']}", (k, steps[k - 1])
        with MetricsLog(run_dir, append=True, state=folder.name) as log:
            assert log.train_steps == progress["step"], (k, steps[k - 1])  # the train events of that state
            # The resumed run commits step 2 again: a name the killed commit may have used.
            _commit(run_dir, log, 2, lambda what: None)
        folder, progress = load_latest_state(run_dir)
        assert progress["step"] == 2 and [p.name for p in (run_dir / "state").iterdir() if p.is_dir()] == [folder.name]


def test_without_latest_json_the_newest_whole_state_is_resumed(tmp_path):
    commit_state(tmp_path, {"round": 0, "step": 1}, save_files("a"))
    second = commit_state(tmp_path, {"round": 0, "step": 2}, save_files("b"))
    (tmp_path / "state" / "latest.json").unlink()
    (tmp_path / "state" / ".0002-round0-step3.tmp").mkdir()  # a save that died half-way
    folder, progress = load_latest_state(tmp_path)
    assert folder == second and progress["step"] == 2
    third = commit_state(tmp_path, {"round": 0, "step": 3}, save_files("c"))
    assert third.name == "0003-round0-step3"  # past every name in the folder: none is reused


def test_a_second_run_on_a_run_directory_in_use_is_refused_naming_the_holder(tmp_path):
    import subprocess
    import sys

    from cdscale.checkpoint import RunDirInUse, check_not_in_use, hold_run_dir

    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pathlib import Path\nfrom cdscale.checkpoint import hold_run_dir\n"
            "with hold_run_dir(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(120)",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirInUse, match=f"in use by pid {holder.pid} on "):
            with hold_run_dir(run_dir):
                pass
        with pytest.raises(RunDirInUse, match=f"in use by pid {holder.pid} on "):  # the check before preflight
            check_not_in_use(run_dir)
    finally:
        holder.kill()  # as kill -9: the kernel releases the lock
        holder.wait()
    check_not_in_use(run_dir)
    check_not_in_use(tmp_path / "never-made")
    with hold_run_dir(run_dir):
        assert (run_dir / ".lock").read_text().startswith(f"pid {os.getpid()} ")


def test_a_new_run_refuses_the_files_of_an_earlier_run_that_never_committed(tmp_path):
    from cdscale.config import load_config
    from cdscale.distillation import Distillation

    cfg = load_config(None, [f"run.output_root={tmp_path}", "run.name=again"])
    (tmp_path / "again" / "data").mkdir(parents=True)  # an interrupted run's shards, drawn with its config
    (tmp_path / "again" / "config.yaml").write_text("data:\n  seed: 7\n")
    with pytest.raises(FileExistsError, match=r"holds a run already \(config.yaml, data\).*--resume"):
        Distillation(cfg)


@pytest.mark.parametrize("damage", ["garbage", "binary", "truncated", "empty"])
def test_a_damaged_progress_or_manifest_file_is_an_error_naming_it_and_what_to_do(tmp_path, damage):
    from cdscale.config import RunDirDamaged

    folder = commit_state(tmp_path, {"round": 0, "step": 1}, save_files("x"))
    (tmp_path / "data").mkdir()
    write_shard(tmp_path, 0, [{"index": 0}], {"kept": 1})
    for path, remedy in (
        (folder / "progress.json", "start a new run"),
        (tmp_path / "data" / "manifest.json", "remove data/"),
    ):
        whole = path.read_bytes()
        path.write_bytes(
            {"garbage": b"{not json", "binary": b"\xff\xfe\x00", "truncated": whole[: len(whole) // 2], "empty": b""}[
                damage
            ]
        )
        with pytest.raises(RunDirDamaged, match=f"{path}: damaged .*{remedy}"):
            load_latest_state(tmp_path)
            read_shard(tmp_path, 0)
        path.write_bytes(whole)


def test_shards_round_trip_and_a_changed_shard_is_refused(tmp_path):
    (tmp_path / "data").mkdir()
    # Two kinds of record in one round (teacher samples, gold answers as one-hot rows with -inf).
    records = [{"index": i, "input_ids": [1, 2, i], "topk_logprobs": [[-0.5, -1.5]], "answer": "a"} for i in range(3)]
    records += [
        {"index": i, "input_ids": [3, i], "topk_logprobs": [[0.0, float("-inf")]], "target": "t"} for i in range(2)
    ]
    write_shard(tmp_path, 0, records, {"kept": 5})
    back, counts = read_shard(tmp_path, 0)
    assert counts == {"kept": 5}
    assert back == [{"answer": None, "target": None, **r} for r in records]  # a field a kind lacks is null
    assert read_shard(tmp_path, 1) is None
    # The data is a dataset as it is.
    import datasets

    path = tmp_path / "data" / "round_0.parquet"
    loaded = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded.to_list() == back
    path.write_bytes(path.read_bytes()[:-10])  # truncated
    with pytest.raises(ValueError, match="round_0.parquet"):
        read_shard(tmp_path, 0)
    assert json.loads((tmp_path / "data" / "manifest.json").read_text())["0"]["records"] == 5


def test_stop_request_from_sigterm_ctrl_c_and_the_wall_time_budget():
    import os
    import signal
    import time

    from cdscale.preemption import StopRequest

    stop = StopRequest(save_by_s=None, started=time.monotonic())
    try:
        assert not stop()
        os.kill(os.getpid(), signal.SIGTERM)  # caught: the process goes on
        assert stop() and stop.reason == "SIGTERM"
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) is stop.previous

    # Ctrl-C: the same stop, exit 130; a second one stops at once.
    from cdscale.preemption import Preempted

    ctrl_c = StopRequest(save_by_s=None, started=time.monotonic())
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert ctrl_c() and ctrl_c.reason == "SIGINT"
        assert Preempted("stopped", ctrl_c.reason).exit_code == 130 and Preempted("stopped", "SIGTERM").exit_code == 0
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs between bytecodes of this thread
    finally:
        ctrl_c.restore()
    assert signal.getsignal(signal.SIGINT) is ctrl_c.previous_sigint

    budget = StopRequest(save_by_s=0.05, started=time.monotonic())
    try:
        assert not budget()
        time.sleep(0.1)
        assert budget() and budget.reason == "run.save_by_s reached"
    finally:
        budget.restore()


def test_random_states_round_trip_through_json(tmp_path):
    import random

    import numpy as np
    import torch

    from cdscale.checkpoint import rng_state, set_rng_state, write_json_atomic

    def draws():
        return (
            random.random(),
            random.gauss(0, 1),
            np.random.rand(3).tolist(),
            np.random.randn(),
            torch.rand(3).tolist(),
        )

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    draws()  # a used generator (numpy's cached gaussian set), not a freshly seeded one
    write_json_atomic(tmp_path / "rng.json", rng_state())
    expected = draws()
    assert draws() != expected  # the generators moved on
    set_rng_state(json.loads((tmp_path / "rng.json").read_text()))
    assert draws() == expected


def test_a_run_written_with_json_lines_shards_still_resumes(tmp_path):
    """Shards were JSON lines (round_<r>.jsonl) until 2026-12-03: read back as they are."""
    import hashlib

    (tmp_path / "data").mkdir()
    text = '{"index": 0, "input_ids": [1, 2]}\n'
    (tmp_path / "data" / "round_0.jsonl").write_text(text)
    entry = {"file": "round_0.jsonl", "records": 1, "sha256": hashlib.sha256(text.encode()).hexdigest(), "counts": {}}
    (tmp_path / "data" / "manifest.json").write_text(json.dumps({"0": entry}))
    assert read_shard(tmp_path, 0) == ([{"index": 0, "input_ids": [1, 2]}], {})
