"""Across Ray nodes: the same run on one node and on two (`ray.cluster_utils.Cluster`: two
raylets on this machine, each its own Ray node), and its metrics read back from the head
node's Prometheus endpoint, which is what the Ray dashboard's Metrics view shows."""

import json
import re
import time
import urllib.request

import pytest
import ray
from ray.cluster_utils import Cluster

from cdscale.config import load_config
from cdscale.distillation import run
from cdscale.student.trainer import free_port

pytestmark = pytest.mark.stack


def _config(model, tmp_path, address, name, *extra):
    return load_config(
        None,
        [
            f"model.path={model}",
            "task.options.max_digits=2",
            f"run.output_root={tmp_path}",
            f"run.name={name}",
            f"run.ray_address={address}",
            "data.num_train=96",
            "data.num_eval=16",
            "student.batch_size=32",
            "student.epochs=2",
            "student.warmup_steps=2",
            "teacher.max_new_tokens=64",
            "teacher.num_engines=1",
            "teacher.enforce_eager=true",
            *extra,
        ],
    )


def _scrape(port: int, metric: str, run_name: str, timeout_s: float = 60.0) -> float:
    """The value of a cdscale gauge on a node's metrics endpoint (Ray exports every few seconds)."""
    pattern = re.compile(rf'^ray_{metric}{{[^}}]*run="{run_name}"[^}}]*}} (\S+)$', re.M)
    deadline = time.monotonic() + timeout_s
    while True:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        found = pattern.search(text)
        if found or time.monotonic() > deadline:
            assert found, f"{metric} for run {run_name} not on the metrics endpoint after {timeout_s:.0f}s"
            return float(found[1])
        time.sleep(2)


@pytest.mark.seconds(85)
def test_two_nodes_match_one_node_and_the_metrics_reach_the_dashboard(teacher_model, tmp_path):
    if ray.is_initialized():
        ray.shutdown()  # this test joins its own cluster
    metrics_port = free_port()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 3,
            "metrics_export_port": metrics_port,
            "include_dashboard": True,
            "dashboard_port": free_port(),
        },
    )
    try:
        one = run(_config(teacher_model, tmp_path, cluster.address, "one"))
        assert len(set(one["placement"]["engines"] + one["placement"]["trainers"])) == 1

        worker = cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        # STRICT_SPREAD: one rank per node, so the gradient all-reduce crosses between nodes.
        # The weights reach the engine by the other transport: rank 0's broadcast over gloo.
        two = run(
            _config(
                teacher_model,
                tmp_path,
                cluster.address,
                "two",
                "student.placement=STRICT_SPREAD",
                "sync.transport=broadcast",
            )
        )
        head = ray.get_runtime_context().get_node_id()
        assert sorted(two["placement"]["trainers"]) == sorted([head, worker.node_id])

        # Same seed, same math: generation runs on one engine either way, and the two ranks
        # reduce the same gradients with gloo. Stated tolerance: accuracies equal, losses
        # within 1e-5 relative (the reduction's order may differ).
        for key in ("teacher", "student_before", "student_after"):
            assert two[key] == one[key], key
        # The student's answers after the sync: the same with either transport, and not the
        # answers of the weights the engine started with.
        answers = {
            (run_name, when): [
                json.loads(line)["completion"]
                for line in (tmp_path / run_name / "eval" / "addition" / f"{when}.jsonl").open()
            ]
            for run_name in ("one", "two")
            for when in ("student_before", "student_after_round_0")
        }
        assert answers["two", "student_after_round_0"] == answers["one", "student_after_round_0"]
        assert answers["two", "student_after_round_0"] != answers["two", "student_before"]
        syncs = {
            run_name: [
                json.loads(line) for line in (tmp_path / run_name / "metrics.jsonl").open() if '"event": "sync"' in line
            ]
            for run_name in ("one", "two")
        }
        assert [(e["transport"], e.get("backend")) for e in syncs["one"] + syncs["two"]] == [
            ("object_store", None),
            ("broadcast", "gloo"),
        ]
        assert two["round_0"]["kept"] == one["round_0"]["kept"]
        for key in ("loss_first", "loss_last"):
            assert two["round_0"][key] == pytest.approx(one["round_0"][key], rel=1e-5)

        # The driver's gauges, read back from the head node's Prometheus endpoint.
        events = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
        last_loss = [e["loss"] for e in events if e["event"] == "train"][-1]
        assert _scrape(metrics_port, "cdscale_train_loss", "two") == pytest.approx(last_loss, rel=1e-6)
        assert _scrape(metrics_port, "cdscale_sync_weight_version", "two") == 1.0
        assert _scrape(metrics_port, "cdscale_generate_tokens_per_s", "two") > 0
        assert _scrape(metrics_port, "cdscale_train_tokens_per_s", "two") > 0

        # The same numbers in TensorBoard's event files in the run directory.
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        board = EventAccumulator(str(tmp_path / "two" / "tensorboard"))
        board.Reload()
        losses = [e["loss"] for e in events if e["event"] == "train"]
        assert [x.value for x in board.Scalars("train/loss")] == pytest.approx(losses)
        after = board.Scalars("eval/accuracy/addition/student_after")
        assert [x.value for x in after] == pytest.approx([two["student_after"]["addition"]["accuracy"]])
    finally:
        ray.shutdown()
        cluster.shutdown()
