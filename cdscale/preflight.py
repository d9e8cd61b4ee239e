"""What a run needs from the machine, checked before anything is written or started. Each
refusal names the field to change; without it the same fault shows up later and worse: a
`ray.init` that waits for minutes, a node start-up that times out with Ray's generic error, a
placement group that waits for GPUs that are not there, a commit that fills the disk halfway.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import safe_open

from cdscale.config import ConfigError, resolve_stages
from cdscale.models import resolve_model_path

if TYPE_CHECKING:
    from cdscale.config import Config, StageConfig

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# The driver's memory per input it draws before the first round: the Example (about 0.4 KiB
# for addition, measured 2026-12-05) and its prompt's tokens, rounded up.
_BYTES_PER_INPUT = 1024


def check(cfg: Config, resume: bool, cluster: bool) -> None:
    """Every check that applies to `cfg` (`cluster`: those of the Ray cluster the run starts
    or joins, too); raises `ConfigError` at the first that fails."""
    if cluster and cfg.run.ray_address:
        check_reachable(cfg.run.ray_address, min(cfg.run.timeout_s, 30))
    elif cluster:
        check_local_gpus(cfg)
        if cfg.run.metrics_export_port is not None:
            check_port_free(cfg.run.metrics_export_port)
    stages = resolve_stages(cfg)
    check_input_counts(cfg, stages)
    check_output_dir(cfg, resume, stages)


def check_reachable(address: str, timeout_s: float) -> None:
    """Fail early, naming the field, where nothing listens at a `host:port` Ray address:
    `ray.init` waits there for minutes (over 200 s on a closed local port, 2026-12-05). A
    refused port fails at once, a host that drops the connection after `timeout_s`."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():  # "auto" and the like: Ray resolves them
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ConfigError(
            f"run.ray_address: nothing answers at {address} ({err.strerror or err}); start the cluster's head "
            "there (`ray start --head`), or leave run.ray_address unset for a local cluster"
        ) from None


def check_local_gpus(cfg: Config) -> None:
    """The local cluster has the GPUs this machine shows (CUDA_VISIBLE_DEVICES applies); a
    placement group asking for more would wait `run.timeout_s` and then fail. A joined cluster
    is not checked: an autoscaler may add the nodes."""
    t, s = cfg.teacher, cfg.student
    needed = t.num_engines * t.gpus_per_engine + s.num_ranks * s.gpus_per_rank
    if needed == 0:
        return
    import torch

    present = torch.cuda.device_count()
    if needed > present:
        raise ConfigError(
            f"teacher.gpus_per_engine, student.gpus_per_rank: {t.num_engines} engine(s) x {t.gpus_per_engine:g} + "
            f"{s.num_ranks} rank(s) x {s.gpus_per_rank:g} = {needed:g} GPUs, and this machine has {present}; "
            "lower them, or join a cluster that has the GPUs (run.ray_address)"
        )


def check_port_free(port: int) -> None:
    """The local Ray node serves its metrics on `port`; taken, its start-up times out with a
    generic error after a minute."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free to Ray too
        try:
            probe.bind(("", port))
        except OSError as err:
            raise ConfigError(
                f"run.metrics_export_port: port {port} is not free ({err.strerror}); choose another, "
                "or leave it unset and Ray picks one"
            ) from None


def check_input_counts(cfg: Config, stages: list[StageConfig]) -> None:
    """Every round's inputs are drawn before the first round: counts that the machine's memory
    cannot hold are refused here, rather than found by a driver that grows without output."""
    inputs = sum(stage.rounds * sum(op.num_train or 0 for op in stage.operations) for stage in stages)
    # Held-out sets are drawn once per operation name, and validation sets only for a run that
    # trains to a criterion, and only for operations that are scored (`inputs.sample_validation`).
    num_eval = {op.name: op.num_eval for stage in stages for op in stage.operations}
    inputs += sum(num_eval.values())
    if cfg.student.until_accuracy:
        inputs += cfg.data.num_validation * sum(n > 0 for n in num_eval.values())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if inputs * _BYTES_PER_INPUT > memory:
        raise ConfigError(
            f"data.num_train, data.num_eval: {inputs:,} inputs over the run's rounds and operations, drawn before "
            f"the first round, need about {inputs * _BYTES_PER_INPUT / 2**30:.0f} GiB in the driver, and this "
            f"machine has {memory / 2**30:.0f} GiB; lower them, or run fewer rounds"
        )


def commit_bytes(model_path: str, cfg: Config) -> int:
    """A lower bound on one committed state's size, from the model's parameter count: the
    student's weights as a safetensors folder and, for a full student, DeepSpeed's fp32 Adam
    state (master weights and two moments, 12 bytes a parameter) with, below ZeRO-3, its own
    copy of the weights. A LoRA student's DeepSpeed files hold its adapters alone, left out.
    (Measured 2026-12-05 on the tiny model, full fp32 ZeRO-2: 21.48 MB committed, 21.27 MB
    by this bound.)"""
    folder = Path(model_path)
    index = folder / "model.safetensors.index.json"
    # A sharded model's index names its files: a folder may hold another copy beside them.
    files = (
        sorted({folder / name for name in json.loads(index.read_text())["weight_map"].values()})
        if index.is_file()
        else sorted(folder.glob("*.safetensors"))
    )
    parameters = 0
    for path in files:
        with safe_open(str(path), framework="np") as weights:
            parameters += sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    width = _DTYPE_BYTES[cfg.model.dtype]
    per_parameter = width
    if not cfg.student.lora.r:
        per_parameter += 12 + (width if cfg.student.zero_stage < 3 else 0)
    return parameters * per_parameter


def check_output_dir(cfg: Config, resume: bool, stages: list[StageConfig]) -> None:
    """The run directory can be written, and its disk has room for the run's commits."""
    root = Path(cfg.run.output_root)
    where = cfg.run_dir if resume else root
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as err:
        reason = "a read-only file system" if err.errno == errno.EROFS else err.strerror
        raise ConfigError(f"run.output_root: cannot write in {where} ({reason}); choose a writable folder") from None
    # A commit is written beside the one before it, which goes only then: two of them from
    # a new run's second round on; a resumed run's state is on disk already.
    commits = 1 if resume or sum(stage.rounds for stage in stages) == 1 else 2
    try:
        model_path = resolve_model_path(cfg.model.path)
    except FileNotFoundError:  # named by the run itself, after the errors in the config's own files
        return
    needed = commits * commit_bytes(model_path, cfg)
    free = shutil.disk_usage(where).free
    if free < needed:
        raise ConfigError(
            f"run.output_root: {where} has {free / 2**20:.1f} MiB free, and this run's commits "
            f"need at least {needed / 2**20:.1f} MiB; free some space, or choose a folder on a larger disk"
        )
