"""The Ray cluster, and where the actors go in it: Ray placement groups, one for the teacher engines and one for the
trainer ranks, each with one bundle per actor.

A placement group reserves all of its bundles at once or none, so a run that does not fit
the cluster fails at start with what it asked for, rather than starting some engines and
waiting forever for the rest. It also keeps each actor's CPUs and GPUs on one node, and a
replacement actor (a dead engine, restarted ranks) goes back into the same bundle.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import ray
from ray.util.placement_group import PlacementGroup, placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cdscale.preemption import Preempted, raise_if_stopped, wait_or_stop

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from cdscale.config import Config


def init_ray(cfg: Config, stop: Callable[[], bool] | None = None) -> Path | None:
    """Join `run.ray_address`, or start the embedded default: a local cluster. Returns the
    local cluster's session folder (its processes' logs) when this call started it, for
    `stop_ray`; None when Ray was running already or the cluster is someone else's. `stop`:
    a stop request, which ends a local start that failed instead of trying it again."""
    if ray.is_initialized():
        return None
    if cfg.run.ray_address:
        ray.init(address=cfg.run.ray_address)
        return None
    # Logical CPUs cover every actor (engines and trainers take turns on the cores:
    # generation and training never run at once).
    needed = cfg.teacher.num_engines * cfg.teacher.cpus_per_engine + cfg.student.num_ranks * cfg.student.cpus_per_rank
    context = start_local_ray(
        stop,
        num_cpus=max(os.cpu_count() or 1, math.ceil(needed)),
        include_dashboard=cfg.run.dashboard,
        dashboard_host=cfg.run.dashboard_host,
        _metrics_export_port=cfg.run.metrics_export_port,
    )
    return Path(context.address_info["session_dir"])


def start_local_ray(stop: Callable[[], bool] | None = None, **options: Any) -> Any:
    """`ray.init(address="local", **options)`: a cluster of its own, never one that `ray start`
    left on this machine (which ray.init() would otherwise join, and then refuse a num_cpus).
    A start that fails because Ray's node did not come up in time (its dashboard agent missed
    its start window) is tried again, unless `stop()` says a stop was requested meanwhile."""
    for attempt in range(1, LOCAL_START_ATTEMPTS + 1):
        began = time.time()
        try:
            return ray.init(address="local", **options)
        except Exception as error:
            # Also Ray's message for any raylet that dies while starting: then the same error
            # comes three times, 30 s apart, before it is raised.
            if "timed out during startup" not in str(error) or attempt == LOCAL_START_ATTEMPTS:
                raise
            _kill_processes_started_since(began)
            raise_if_stopped(stop, "stopped while Ray started")
            log.warning(
                "the local Ray cluster did not start (attempt %d of %d: %s; its logs: %s); starting it again",
                attempt,
                LOCAL_START_ATTEMPTS,
                error,
                (Path(options.get("_temp_dir", "/tmp/ray")) / "session_latest").resolve(),
            )
    raise AssertionError("unreachable")


# Ray's raylet waits a fixed 15 s for its dashboard agent, a Python process, to report its
# ports, and aborts when it misses that: ray.init then fails with "The current node timed out
# during startup". The agent's imports alone took longer than that on a machine whose 2 CPUs
# ran two other runs (2026-12-05, in `make test`); a second start finds the imports cached.
LOCAL_START_ATTEMPTS = 3


def _kill_processes_started_since(began: float) -> None:
    """Kill what a failed `ray.init` left of its cluster: this process's descendants that are
    Ray's and started after `began` (the GCS server, the dashboard, the log monitor; the raylet
    has aborted, and its agents, no longer this process's descendants, exit on their own when
    they see it gone). They would otherwise live until this process exits.
    A second of slack: psutil's start times count from a boot time in whole seconds."""
    _kill([p for p in _ray_descendants() if _started_at(p) >= began - 1])


def _ray_descendants() -> list[psutil.Process]:
    """This process's descendants that are Ray's: its cluster's processes, and the actors'
    worker processes while the raylet is alive to parent them."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if "ray" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:  # gone, a zombie, or not ours to read: not one to kill
            pass
    return found


def _started_at(process: psutil.Process) -> float:
    try:
        return process.create_time()
    except psutil.Error:
        return 0.0


def _kill(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.kill()
        except psutil.Error:  # gone already, or not ours to signal
            pass
    still_running(processes, timeout_s=10)


def still_running(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Those of `processes` still running after at most `timeout_s`. This process's own children
    are reaped; a process that has exited but that only its own parent can reap (a zombie: an
    actor's worker whose raylet is gone, in a container whose first process reaps nothing) counts
    as ended, where psutil.wait_procs would wait for it to the timeout."""
    deadline = time.monotonic() + timeout_s
    running = processes
    while running and time.monotonic() < deadline:
        _, running = psutil.wait_procs(running, timeout=0.1)
        running = [p for p in running if _status(p) != psutil.STATUS_ZOMBIE]
    return running


def _status(process: psutil.Process) -> str:
    try:
        return process.status()
    except psutil.Error:  # gone meanwhile, or not ours to read
        return psutil.STATUS_ZOMBIE


def stop_ray(session: Path, keep_logs: bool) -> None:
    """Shut down the local cluster `init_ray` started, so that none of its processes outlives
    the run, and remove its session folder unless `keep_logs` (a failed run: the actors' logs
    are there). Ray leaves every session folder in its temp dir otherwise: 486 of them, 519 MB,
    had piled up on a test machine."""
    ours = _ray_descendants()
    ray.shutdown()
    # The actors' workers exit on their own once the raylet is gone, but one that the raylet
    # had just started (a stop while the actors start) was still alive 10 s after such a run
    # ended, on a new machine whose 2 CPUs ran two other tests (2026-12-06, tests/test_resume.py).
    _kill(still_running(ours, timeout_s=3))
    if keep_logs:
        log.warning("the Ray processes' logs of this run: %s", session)
    else:
        shutil.rmtree(session, ignore_errors=True)


def reserve(
    count: int, cpus: float, gpus: float, strategy: str, timeout_s: float, what: str, stop: Callable[[], bool]
) -> PlacementGroup:
    """A placement group of `count` bundles of `cpus` CPUs and `gpus` GPUs, once Ray has placed
    it (a busy shared cluster may take a while: `stop` is polled meanwhile)."""
    bundle = {name: amount for name, amount in (("CPU", cpus), ("GPU", gpus)) if amount > 0}
    group = placement_group([bundle] * count, strategy=strategy, name=f"cdscale-{what.replace(' ', '-')}")
    try:
        ready = wait_or_stop([group.ready()], stop, timeout_s, f"stopped while Ray placed the {what}")
    except Preempted:
        remove_placement_group(group)
        raise
    if not ready:
        remove_placement_group(group)
        raise TimeoutError(
            f"{what}: Ray could not place {count} bundles of {bundle} with strategy {strategy} within {timeout_s:.0f}s "
            f"(run.timeout_s); the cluster has {ray.cluster_resources()} in all, {ray.available_resources()} free"
        )
    return group


def in_bundle(group: PlacementGroup | None, index: int) -> dict[str, Any]:
    """Actor options that put an actor into bundle `index` of `group` (none without a group)."""
    if group is None:
        return {}
    return {
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=group, placement_group_bundle_index=index
        )
    }


def bundle_nodes(group: PlacementGroup) -> list[str]:
    """The Ray node id each bundle was placed on, in bundle order."""
    nodes = placement_group_table(group)["bundles_to_node_id"]
    return [nodes[i] for i in range(len(nodes))]


def release(*groups: PlacementGroup | None) -> None:
    for group in groups:
        if group is not None:
            remove_placement_group(group)
