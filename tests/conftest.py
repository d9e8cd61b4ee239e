import os

# `make test` runs three workers on 2 cores, so the tests' torch threads (trainer ranks, engines,
# bootstraps) share cores across processes. OpenMP's default lets an idle thread spin for a
# while after each parallel region, taking the core that another process's thread waits for:
# two 2-thread training loops at once ran 5x slower than with passive waiting
# (benchmarks/omp_wait.py). Set before torch loads; Ray actors and `cdscale run` subprocesses
# inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The one compiled engine of the suite (tests/test_stack.py's sync test) compiles its graphs in
# its own process rather than in a pool of compile workers, each importing torch again: with the
# compile cache empty, 65 CPU-seconds and 61 s to start and generate, against 79 and 76 with the
# pool, alone on 2 CPUs (2026-12-06). A Ray cluster started here passes it on to the engines.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import pytest  # noqa: E402

from cdscale.models import build_once  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The order for `make test`'s workers (pytest-xdist, `--dist load --maxschedchunk 1`): the
    stack tests longest first by their `seconds` marker, then the unit tests. A minutes-long
    test that starts last keeps the run going while the other workers are idle; started first,
    it overlaps everything else.

    xdist sends each of the n workers two consecutive tests of this list at the start, then
    one more each time a worker starts one. So the first 2n places pair the longest test with
    the 2n-th longest, the second longest with the (2n-1)-th, and so on: in plain descending
    order the first worker would run the two longest tests one after the other (the config
    smoke's SmolLM2 group, then the resume test: 725 of the run's 765 s, 2026-12-05)."""

    def seconds(item: pytest.Item) -> float:
        marker = item.get_closest_marker("seconds")
        if marker is not None:
            return marker.args[0]
        return 30 if item.get_closest_marker("stack") else 0

    items.sort(key=seconds, reverse=True)  # stable: collection order among equals
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    first = items[: 2 * workers]
    paired = [test for i in range(len(first) // 2) for test in (first[i], first[-1 - i])]
    items[: len(paired)] = paired


# Each test's span, setup to teardown, per xdist worker: {(worker, test id): [start, stop]} (epoch s).
_TIMELINE: dict[tuple[str, str], list[float]] = {}
# Each stack test's CPU-seconds, setup to teardown: {test id: seconds}.
_CPU: dict[str, float] = {}
_CPU_BEFORE = pytest.StashKey[float]()
_CPU_GROUPS = Path("/sys/fs/cgroup/cpuacct/cdscale-tests")
_CPU_GROUP = _CPU_GROUPS / f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-{os.getpid()}"  # this worker's


def _cpu_seconds() -> float | None:
    """CPU-seconds of every process this one started, its own included, from a cpuacct cgroup
    of its own: a process stays in its group when its parent dies, so the Ray processes of a
    killed driver, reparented to init, still count. None where cgroup v1's cpuacct is not
    writable (a laptop): nothing is measured there."""
    try:
        if not _CPU_GROUP.is_dir():
            _CPU_GROUP.mkdir(parents=True)
            try:
                (_CPU_GROUP / "cgroup.procs").write_text(str(os.getpid()))
            except OSError:
                _CPU_GROUP.rmdir()
                raise
        return int((_CPU_GROUP / "cpuacct.usage").read_text()) / 1e9
    except OSError:
        return None


def pytest_sessionfinish() -> None:
    """Out of the measuring group, and the groups without processes removed: this one, and one
    that an earlier run could not remove while a process it had started still lived."""
    if not _CPU_GROUP.is_dir():
        return
    try:
        (_CPU_GROUPS.parent / "cgroup.procs").write_text(str(os.getpid()))
    except OSError:
        return
    for empty in [*_CPU_GROUPS.glob("*/"), _CPU_GROUPS]:  # a group with processes stays (EBUSY)
        try:
            empty.rmdir()
        except OSError:
            pass


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item):
    seconds = _cpu_seconds() if item.get_closest_marker("stack") else None
    if seconds is not None:
        item.stash[_CPU_BEFORE] = seconds
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A stack test's CPU work, setup to teardown (with the processes it started), in its
    teardown report, which xdist sends to the controller: what the suite's time is made of on
    a machine whose cores are all busy. A process a test leaves running counts in the next."""
    outcome = yield
    before = item.stash.get(_CPU_BEFORE, None)
    if call.when == "teardown" and before is not None:
        outcome.get_result().user_properties.append(("cpu_s", round(_cpu_seconds() - before, 1)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not report.start:  # xdist's report of a worker that crashed has no times
        return
    gateway = getattr(getattr(report, "node", None), "gateway", None)  # the worker that ran it, under xdist
    span = _TIMELINE.setdefault((gateway.id if gateway else "main", report.nodeid), [report.start, report.stop])
    span[0], span[1] = min(span[0], report.start), max(span[1], report.stop)
    cpu = dict(report.user_properties).get("cpu_s")
    if cpu is not None:
        _CPU[report.nodeid] = cpu


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Per worker, when its last test ended and its tests over 20 s in the order they ran (seconds
    from the first test's start, and a stack test's CPU-seconds): whether a worker idled at the
    end, which tests shared the cores, and what each cost, which `--durations` does not show."""
    if not _TIMELINE:
        return
    t0 = min(start for start, _ in _TIMELINE.values())
    workers: dict[str, list[tuple[float, float, str]]] = {}
    for (worker, test), (start, stop) in sorted(_TIMELINE.items(), key=lambda item: item[1][0]):
        workers.setdefault(worker, []).append((start - t0, stop - t0, test))
    terminalreporter.section("tests over 20 s, per worker")
    for worker, spans in sorted(workers.items()):
        terminalreporter.write_line(f"{worker}: its last test ended at {max(stop for _, stop, _ in spans):.0f} s")
        for start, stop, test in spans:
            if stop - start > 20:
                cpu = f"{_CPU[test]:5.0f} CPU-s" if test in _CPU else " " * 10
                terminalreporter.write_line(f"  {start:5.0f} - {stop:5.0f} s  {cpu}  {test}")
    if _CPU:
        terminalreporter.write_line(
            f"stack tests: {sum(_CPU.values()):.0f} CPU-s in all (processes they started included)"
        )


@pytest.fixture(scope="session")
def built_once(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, Callable[[Path], None]], Path]:
    """`built_once(name, build)`: a model folder that every pytest-xdist worker of this session
    shares. The first worker builds it under a file lock; the others wait for it and reuse it
    (a bootstrap is a minute of 2 CPUs)."""
    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent  # the session's folder, above each worker's own
    return lambda name, build: build_once(root / "shared-models" / name, build)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from cdscale.models.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The real SmolLM2 tokenizer, from the packaged weights (converted once, then cached)."""
    from transformers import AutoTokenizer

    from cdscale.models.smollm2 import prepare_smollm2

    return AutoTokenizer.from_pretrained(prepare_smollm2())


@pytest.fixture(scope="session")
def teacher_model(built_once):
    """A tiny Llama bootstrapped for 250 steps on 1-2 digit scratchpad addition: enough for
    teacher outputs with extractable answers (about a minute on 2 CPUs)."""

    def build(out: Path) -> None:
        import torch

        from cdscale.bootstrap import BootstrapSettings, bootstrap
        from cdscale.tasks import build_task

        # One thread: the suite keeps both cores busy, so CPU-seconds are its time, and this
        # bootstrap took 53-59 of them on one thread against 69-73 on two, with the same weights
        # (alone, two runs each, slow AMD EPYC draw, OMP_WAIT_POLICY=PASSIVE, 2026-12-06); the
        # other workers' tests use the second core.
        torch.set_num_threads(1)
        task = build_task("addition", {"min_digits": 1, "max_digits": 2})
        # 4 layers: the depth every stack test's expectations were set on (the demo's has 2).
        settings = BootstrapSettings(steps=250, batch_size=32, lr=3e-3, until_sampled_accuracy=None, num_layers=4)
        bootstrap(task, out, settings)

    return built_once("tiny-teacher", build)
