"""Every file of a committed run directory, damaged in every way tried (truncated, garbage,
binary bytes, emptied, deleted, unreadable), then resumed as `cdscale run --resume` does up
to where its cluster would start: each resume either goes on from what the commit left (the
file is one a resume does not read back, or the damage left it as it was) or stops with an
error of the CLI's exit-2 kinds that names the file. Never another exception, and the attempt
changes no committed state.

The run directory is made by cdscale's own writers (`Distillation`, `write_shard`,
`commit_state`, `save_hf_checkpoint`) with small stand-ins for the trainer ranks' files, so
all 100-odd cases take seconds; tests/test_resume.py resumes real commits on the real stack.
"""

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from cdscale.checkpoint import (
    Progress,
    commit_state,
    copy_dir_atomic,
    rng_state,
    save_hf_checkpoint,
    write_json_atomic,
    write_shard,
)
from cdscale.cli import resume_config
from cdscale.config import ConfigError, RunDirDamaged, load_config

# Files a resume does not read back, or reads line by line keeping what it cannot parse: any
# damage to them leaves the resume correct.
NOT_READ_BACK = ("metrics.jsonl", "summary.json", "eval/", "student/", "tensorboard/", "state/latest.json")


def damage(path: Path, how: str) -> None:
    whole = path.read_bytes()
    if how == "deleted":
        path.unlink()
    elif how == "unreadable":
        path.chmod(0)
    else:
        path.write_bytes(
            {
                "truncated": whole[: len(whole) // 2],
                "emptied": b"",
                "garbage": whole[: len(whole) // 3] + b"{not: [what, it, was" + whole[len(whole) // 3 + 20 :],
                "binary": b"\xff\xfe\x00\x81" * 8,
            }[how]
        )


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def committed_run(tmp_path_factory) -> Path:
    """A run directory after round 0's commit, as cdscale writes one."""
    import torch
    from transformers import AutoModelForCausalLM

    from cdscale.distillation import Distillation
    from cdscale.models.tiny import build_tiny_llama

    root = tmp_path_factory.mktemp("damage")
    model = build_tiny_llama(root / "model", hidden_size=64, num_layers=1, intermediate_size=64)
    cfg = load_config(
        None,
        [
            f"model.path={model}",
            f"run.output_root={root}",
            "run.name=run",
            "data.num_train=8",
            "data.num_eval=4",
            "student.batch_size=4",
        ],
    )
    recipe = Distillation(cfg)
    run_dir = cfg.run_dir
    write_shard(run_dir, 0, [{"index": i, "input_ids": [1, 2, i]} for i in range(8)], {"kept": 8})
    recipe.log.write(event="train", round=0, step=0, loss=1.0)
    weights = list(AutoModelForCausalLM.from_pretrained(model).named_parameters())

    def save(folder: Path) -> None:
        (folder / "trainer").mkdir()
        torch.save({"global_steps": 1, "module": dict(weights)}, folder / "trainer" / "mp_rank_00_model_states.pt")
        write_json_atomic(folder / "rng_rank0.json", rng_state())
        save_hf_checkpoint(weights, str(model), folder / "student")

    progress = Progress(round=1, summary={"student_after": {"addition": {"accuracy": 0.5}}})
    state = commit_state(
        run_dir, progress.as_dict(), save, lambda name: recipe.log.write(event="commit", state=name, round=1, step=0)
    )
    recipe.log.close()
    copy_dir_atomic(state / "student", run_dir / "student")
    write_json_atomic(run_dir / "summary.json", progress.summary)
    (run_dir / "eval" / "addition").mkdir(parents=True)
    (run_dir / "eval" / "addition" / "student_after_round_0.jsonl").write_text('{"input": "1 + 1"}\n')
    return run_dir


def resume_before_the_cluster(run_dir: Path) -> None:
    """What `cdscale run --resume run_dir` does before it starts Ray."""
    from cdscale.checkpoint import hold_run_dir
    from cdscale.distillation import Distillation

    cfg = resume_config(str(run_dir), [])
    with hold_run_dir(cfg.run_dir):
        Distillation(cfg, resume=True).log.close()


def cases(run_dir: Path) -> list[tuple[str, str]]:
    files = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock")
    hows = ("truncated", "emptied", "garbage", "binary", "deleted", "unreadable")
    return [(name, how) for name in files for how in hows]


def test_the_undamaged_run_resumes(committed_run, tmp_path):
    run_dir = shutil.copytree(committed_run, tmp_path / "run")
    resume_before_the_cluster(run_dir)


def test_every_damaged_file_resumes_or_is_named_in_a_one_line_error(committed_run, tmp_path):
    outcomes = {"resumed": 0, "refused": 0}
    for k, (name, how) in enumerate(cases(committed_run)):
        run_dir = shutil.copytree(committed_run, tmp_path / str(k) / "run")
        path = run_dir / name
        before = path.read_bytes()
        damage(path, how)
        state = run_dir / "state"
        committed = tree_digest(state) if not name.startswith("state/") else None
        try:
            resume_before_the_cluster(run_dir)
        except (ConfigError, RunDirDamaged) as err:  # the CLI's exit 2, one line
            outcomes["refused"] += 1
            assert path.name in str(err) and "\n" not in str(err).strip(), (name, how, err)
        else:
            outcomes["resumed"] += 1
            unchanged = how == "unreadable" and os.geteuid() == 0  # root reads it anyway
            assert name.startswith(NOT_READ_BACK) or unchanged or (how == "emptied" and not before), (name, how)
        if committed is not None:
            assert tree_digest(state) == committed, (name, how)  # the attempt changed no committed state
    assert outcomes["refused"] > 0 and outcomes["resumed"] > 0, outcomes


def test_report_of_an_unfinished_run_reads_its_last_commit_only(committed_run, tmp_path, capsys):
    """A run under way, stopped or crashed has no summary.json yet: `cdscale report` shows its
    last commit, and skips what metrics.jsonl holds after it (a line being written, a
    damaged one)."""
    from cdscale.cli import main
    from cdscale.report import load_run

    run_dir = shutil.copytree(committed_run, tmp_path / "run")
    (run_dir / "summary.json").unlink()
    with open(run_dir / "metrics.jsonl", "ab") as f:
        f.write(b'{"time": 1, "event": "train", "round": 1, "step": 0, "loss": 9.0}\n\xff\xfe{"time": 2, "ev')
    summary, events = load_run(run_dir)
    assert summary["student_after"]["addition"]["accuracy"] == 0.5
    assert [e["event"] for e in events][-1] == "commit" and all(e.get("loss") != 9.0 for e in events)
    assert main(["report", str(run_dir)]) == 0 and "50.0" in (run_dir / "report" / "report.md").read_text()
    shutil.rmtree(run_dir / "state")
    assert main(["report", str(run_dir)]) == 2
    assert "no summary.json and no committed state" in capsys.readouterr().err
