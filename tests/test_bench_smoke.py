"""The benchmark suite at tiny sizes: keeps the scripts alive. No assertion on speed."""

import json

import pytest

pytestmark = pytest.mark.stack


@pytest.mark.seconds(160)  # with the tiny teacher's bootstrap, when it builds it
def test_benchmark_suite_smoke(teacher_model, tmp_path):
    from benchmarks import suite

    out = tmp_path / "results"
    assert suite.main(["--smoke", "--out", str(out), "--round-model", str(teacher_model)]) == 0
    for name in ("teacher_generation", "weight_sync", "student_training_cpu", "loss_memory", "round_breakdown"):
        results = json.loads((out / f"{name}.json").read_text())["results"]
        assert results and (out / f"{name}.md").read_text().strip()
    generation = json.loads((out / "teacher_generation.json").read_text())["results"]["tiny"]
    assert generation["prefix_cache_on"]["tokens"] == 8 * 8  # fixed-length outputs on both paths
    assert generation["hf_generate"]["tokens"] == 8 * 8
    assert generation["n_in_one_request"]["tokens"] == generation["n_separate_requests"]["tokens"] == 4 * 2 * 8
    sync = json.loads((out / "weight_sync.json").read_text())["results"]["tiny"]
    assert sync["bytes"] > 0 and sync["copy_s"] > 0
    assert sync["object_store"]["sync_s"] > 0 and sync["broadcast"]["sync_s"] > 0
    memory = json.loads((out / "loss_memory.json").read_text())["results"]["tiny"]
    assert memory["answer_positions_peak_bytes"] > 0 and memory["full_logits_peak_bytes"] > 0
    split = json.loads((out / "round_breakdown.json").read_text())["results"]["seconds"]
    assert split["total"] > 0 and split["generate"] > 0
