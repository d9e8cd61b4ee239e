"""ZeRO-Offload (`student.offload`): the DeepSpeed config it writes, and two real ZeRO-3 ranks
with optimizer and parameters offloaded taking the same steps as ranks without. Its use is on
GPUs (less device memory); on CPU ranks nothing moves, but the offloaded code path runs: the
offloaded partitions, stepped by torch's fused CPU AdamW (no op is compiled)."""

import pytest
import ray
import torch

from benchmarks.student_training import make_records
from cdscale.config import ConfigError, load_config
from cdscale.placement import start_local_ray
from cdscale.student.group import TrainerGroup, deepspeed_config
from cdscale.student.trainer import StudentTrainer, TrainerSettings
from cdscale.sync.object_store import export_weights


@pytest.mark.parametrize(
    "offload,zero",
    [
        ("none", {"stage": 3}),
        ("optimizer", {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": True}}),
        (
            "optimizer_and_params",
            {
                "stage": 3,
                "offload_optimizer": {"device": "cpu", "pin_memory": True},
                "offload_param": {"device": "cpu", "pin_memory": True},
            },
        ),
    ],
)
def test_offload_writes_deepspeeds_offload_sections(offload, zero):
    cfg = load_config(None, [f"student.offload={offload}", f"student.zero_stage={zero['stage']}"])
    assert deepspeed_config(cfg)["zero_optimization"] == zero


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["student.offload=optimizer", "student.zero_stage=1"], "needs student.zero_stage 2 or 3, got 1"),
        (["student.offload=optimizer_and_params", "student.zero_stage=2"], "needs student.zero_stage 3, got 2"),
        (["student.offload=disk"], "student.offload: 'disk' is not allowed"),
    ],
)
def test_offload_needs_a_zero_stage_that_partitions_what_it_moves(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


@pytest.mark.parametrize("offload,fused", [("none", None), ("optimizer", True), ("optimizer_and_params", True)])
def test_an_offloaded_optimizer_is_torchs_fused_adamw_which_deepspeed_is_told_to_accept(offload, fused):
    """No DeepSpeed CPU Adam: it compiles C++ on first use on every machine (about 100
    CPU-seconds on 2 CPUs), which DeepSpeed asks for unless `zero_force_ds_cpu_optimizer` is off."""
    cfg = load_config(None, [f"student.offload={offload}", "student.zero_stage=3"])
    ds_config = deepspeed_config(cfg)
    assert ds_config["zero_force_ds_cpu_optimizer"] is False
    trainer = StudentTrainer(0, 1, TrainerSettings("unused", lr=1e-3, weight_decay=0.01), ds_config)
    optimizer = trainer._optimizer([torch.nn.Parameter(torch.zeros(4))])
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["fused"] is fused
    assert optimizer.defaults["lr"] == 1e-3 and optimizer.defaults["weight_decay"] == 0.01


@pytest.mark.stack
@pytest.mark.seconds(60)
def test_offloaded_zero3_ranks_take_the_steps_of_ranks_without_offload(teacher_model, tmp_path):
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(teacher_model).vocab_size
    records = make_records(16, vocab, prompt_len=10, answer_len=6, top_k=20, seed=0)
    start_local_ray(num_cpus=2, include_dashboard=False)
    weights = {}
    try:
        for offload in ("none", "optimizer_and_params"):
            cfg = load_config(
                None,
                [
                    f"model.path={teacher_model}",
                    f"run.output_root={tmp_path}",
                    "student.num_ranks=2",
                    "student.zero_stage=3",
                    f"student.offload={offload}",
                    "student.batch_size=8",
                    "student.weight_decay=0.01",
                    "run.timeout_s=300",
                ],
            )
            group = TrainerGroup.from_config(cfg, str(teacher_model)).start()
            try:
                group.call("set_records", records)
                group.call("train_steps", [list(range(8)), list(range(8, 16))], [1e-2, 1e-2])
                weights[offload] = dict(ray.get(export_weights(group.actors, 300)).named_tensors())
            finally:
                group.kill()
    finally:
        ray.shutdown()
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(teacher_model, dtype=torch.float32).state_dict()
    plain, offloaded = weights["none"], weights["optimizer_and_params"]
    assert plain.keys() == offloaded.keys()
    moved = max((plain[k] - before[k]).abs().max().item() for k in plain)
    assert moved > 1e-3  # the steps changed the weights, so equal weights compare two updates
    for name in plain:
        torch.testing.assert_close(offloaded[name], plain[name], rtol=1e-4, atol=1e-5, msg=name)
