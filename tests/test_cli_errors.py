"""Every subcommand of `cdscale` with malformed arguments: an argparse usage error or one
`cdscale: error: ...` line, exit 2, and never a Python traceback. None of them starts work."""

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cdscale.cli import main


def malformed(tmp_path) -> list[list[str]]:
    not_yaml = tmp_path / "bad.yaml"
    not_yaml.write_text("model: [unclosed\n")
    a_dir = tmp_path / "a-dir"
    a_dir.mkdir()
    return [
        [],
        ["frobnicate"],
        ["run", "--no-such-flag"],
        ["run", "no-equals-sign"],
        ["run", "student.lr=abc"],
        ["run", "no_such_section.field=1"],
        ["run", "student.no_such_field=1"],
        ["run", "=3"],
        ["run", "stages=[{name: x"],
        ["run", "--config", str(tmp_path / "missing.yaml")],
        ["run", "--config", str(a_dir)],
        ["run", "--config", str(not_yaml)],
        ["run", "--resume"],
        ["run", "--resume", str(tmp_path / "missing-run")],
        ["run", "--resume", str(a_dir), "--config", str(not_yaml)],
        ["run", "--resume", str(a_dir), "data.seed=3"],
        ["config", "student.batch_size=-1"],
        ["config", "--config", str(not_yaml)],
        ["bootstrap", "--steps", "abc"],
        ["bootstrap", "--steps", "0"],
        ["bootstrap", "--batch-size", "-4"],
        ["bootstrap", "--lr", "0"],
        ["bootstrap", "--min-digits", "5", "--max-digits", "2"],
        ["bootstrap", "--until-sampled-accuracy", "1.5"],
        ["bootstrap", "--max-restarts", "-1"],
        ["bootstrap", "--problems", "10"],
        ["bootstrap", "--layers", "0"],
        ["bootstrap", "--task", "nope"],
        ["report"],
        ["report", str(tmp_path / "missing-run")],
        ["report", str(a_dir)],
        ["prepare-model"],
        ["prepare-model", "no-such-model"],
    ]


def test_malformed_arguments_get_one_error_line_and_exit_2(tmp_path, capsys):
    for argv in malformed(tmp_path):
        try:
            code = main(argv)
        except SystemExit as usage:  # argparse: usage and the error on stderr
            code = usage.code
        err = capsys.readouterr().err
        assert code == 2, (argv, code, err)
        assert "Traceback" not in err, (argv, err)
        lines = [line for line in err.splitlines() if line.startswith("cdscale: error:")]
        assert err.startswith("usage:") or len(lines) == 1, (argv, err)


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["bootstrap", "--help"], ["report", "--help"]])
def test_help_exits_0(argv, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0 and "usage: cdscale" in capsys.readouterr().out


@pytest.mark.timeout(120)  # ray.init alone waited over 200 s at such an address
def test_a_ray_address_where_nothing_listens_is_named_at_once(tmp_path, capsys):
    import socket

    from cdscale.models.tiny import build_tiny_llama

    model = build_tiny_llama(tmp_path / "model")
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["run", f"model.path={model}", f"run.output_root={tmp_path}", f"run.ray_address=127.0.0.1:{port}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"cdscale: error: run.ray_address: nothing answers at 127.0.0.1:{port}" in err
    assert "Traceback" not in err
    assert not (tmp_path / "addition").exists()  # nothing written: the corrected command starts afresh


def refused(argv: list[str], capsys) -> str:
    """The one error line of a run that preflight refuses."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("cdscale: error:")]
    return line


def test_preflight_names_the_field_of_each_refusal_before_anything_is_written(tmp_path, capsys):
    import socket

    import torch

    from cdscale.models.tiny import build_tiny_llama

    model = build_tiny_llama(tmp_path / "model")
    run = ["run", f"model.path={model}", f"run.output_root={tmp_path / 'runs'}"]
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert f"run.metrics_export_port: port {port} is not free" in refused(
            [*run, f"run.metrics_export_port={port}"], capsys
        )
    gpus = torch.cuda.device_count()
    line = refused([*run, "teacher.num_engines=1", f"teacher.gpus_per_engine={gpus + 1}"], capsys)
    assert f"1 engine(s) x {gpus + 1} + 2 rank(s) x 0 = {gpus + 1} GPUs, and this machine has {gpus}" in line
    line = refused([*run, "data.num_train=1000000000000"], capsys)  # a terabyte of inputs, drawn before round 0
    assert "data.num_train, data.num_eval: 1,000,000,000,500 inputs over the run's rounds" in line
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    under_a_file = ["run", f"model.path={model}", f"run.output_root={a_file / 'runs'}"]
    assert f"run.output_root: cannot write in {a_file / 'runs'}" in refused(under_a_file, capsys)
    assert not (tmp_path / "runs").exists()  # nothing written: the corrected command starts afresh


@contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"a tmpfs cannot be mounted here ({mounted.stderr.strip()}); it needs root or CAP_SYS_ADMIN")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_a_read_only_or_nearly_full_output_root_is_refused_before_anything_is_written(tmp_path, capsys):
    from cdscale.models.tiny import build_tiny_llama

    model = build_tiny_llama(tmp_path / "model")
    with tmpfs(tmp_path / "ro", "ro,size=1m") as root:
        line = refused(["run", f"model.path={model}", f"run.output_root={root}"], capsys)
        assert f"run.output_root: cannot write in {root} (a read-only file system)" in line
    with tmpfs(tmp_path / "small", "size=1m") as root:
        line = refused(["run", f"model.path={model}", f"run.output_root={root}"], capsys)
        assert f"run.output_root: {root} has 1.0 MiB free, and this run's commits need at least" in line
        assert list(root.iterdir()) == []


@pytest.mark.parametrize("until_accuracy,refused", [(0.0, False), (0.5, True)])
def test_the_input_count_has_validation_sets_only_for_a_run_trained_to_a_criterion(until_accuracy, refused):
    """`data.num_validation` inputs are drawn only when `student.until_accuracy` is set: 10^8 of
    them (about 95 GiB by preflight's estimate) refuse such a run alone."""
    from cdscale.config import ConfigError, load_config, resolve_stages
    from cdscale.preflight import check_input_counts

    cfg = load_config(
        None,
        [
            "data.num_train=128",
            "data.num_eval=16",
            "data.num_validation=100000000",
            f"student.until_accuracy={until_accuracy}",
        ],
    )
    if not refused:
        check_input_counts(cfg, resolve_stages(cfg))
        return
    with pytest.raises(ConfigError, match=r"100,000,144 inputs over the run's rounds and operations"):
        check_input_counts(cfg, resolve_stages(cfg))
