"""GPU-only paths: a DeepSpeed rank on a GPU, its process group on NCCL, the ZeRO-3 weight
export gathered in buckets there, and the broadcast transport over NCCL (two GPUs). Skipped
where there is no GPU; run on a GPU machine with `pytest tests/test_gpu.py` (no vLLM needed:
the engines are not involved)."""

import pytest
import ray
import torch

from cdscale.placement import start_local_ray

pytestmark = [
    pytest.mark.stack,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU (NCCL process group, GPU-resident ZeRO-3 shards)"
    ),
]


def test_a_zero3_rank_on_a_gpu_uses_nccl_and_exports_its_weights_in_buckets(teacher_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from cdscale.config import load_config
    from cdscale.student.group import TrainerGroup
    from cdscale.sync.object_store import export_weights

    if ray.is_initialized():
        ray.shutdown()
    start_local_ray(num_cpus=2, num_gpus=1, include_dashboard=False)
    cfg = load_config(
        None,
        [
            f"model.path={teacher_model}",
            "student.num_ranks=1",
            "student.gpus_per_rank=1",
            "student.cpus_per_rank=1",
            "student.zero_stage=3",
            "sync.bucket_mb=1",
            "student.batch_size=8",
            "model.dtype=bfloat16",
        ],
    )
    [trainer] = TrainerGroup.from_config(cfg, str(teacher_model)).start().actors
    try:
        where = ray.get(trainer.__ray_call__.remote(lambda self: (torch.distributed.get_backend(), str(self.device))))
        assert where[0] == "nccl" and where[1].startswith("cuda")
        exported = dict(ray.get(export_weights([trainer], 600)).named_tensors())
        reference = AutoModelForCausalLM.from_pretrained(teacher_model, dtype=torch.bfloat16).state_dict()
        assert set(exported) <= set(reference) and len(exported) > 10
        for name, tensor in exported.items():  # gathered from the GPU shards, bucket by bucket
            assert torch.equal(tensor, reference[name]), name
    finally:
        ray.kill(trainer)
        ray.shutdown()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs: NCCL refuses two ranks on one GPU")
def test_rank_0_broadcasts_its_weights_over_nccl_to_a_receiver_on_another_gpu(teacher_model):
    """The broadcast transport's NCCL path, both ends: a ZeRO-3 rank on one GPU gathers and
    sends its buckets, a receiver on the other GPU takes them the way an engine's worker does
    (`broadcast.receive`); only the engine's reload is left out (no vLLM needed)."""
    from transformers import AutoModelForCausalLM

    from cdscale.config import load_config
    from cdscale.student.group import TrainerGroup
    from cdscale.sync.broadcast import SyncGroup, close_group, open_group, receive

    @ray.remote(num_gpus=1)
    class Receiver:
        def take(self, spec, plan):
            group = open_group(spec, 1)
            named = receive(group, plan, torch.device("cuda", 0))
            close_group(group, "nccl")
            return {name: t.cpu() for name, t in named}

    if ray.is_initialized():
        ray.shutdown()
    start_local_ray(num_cpus=2, num_gpus=2, include_dashboard=False)
    cfg = load_config(
        None,
        [
            f"model.path={teacher_model}",
            "student.num_ranks=1",
            "student.gpus_per_rank=1",
            "student.cpus_per_rank=1",
            "teacher.gpus_per_engine=1",
            "student.zero_stage=3",
            "sync.bucket_mb=1",
            "student.batch_size=8",
            "model.dtype=bfloat16",
        ],
    )
    [trainer] = TrainerGroup.from_config(cfg, str(teacher_model)).start().actors
    receiver = Receiver.options(num_cpus=0).remote()
    try:
        plan = ray.get(trainer.weight_plan.remote())
        host, port = ray.get(trainer.master_address.remote())
        spec = SyncGroup(host, port, 2, "nccl", 600)
        sent = trainer.broadcast_weights.remote(spec)
        received = ray.get(receiver.take.remote(spec, plan), timeout=600)
        ray.get(sent, timeout=60)
        assert len(plan) > 1  # several buckets
        reference = AutoModelForCausalLM.from_pretrained(teacher_model, dtype=torch.bfloat16).state_dict()
        assert set(received) <= set(reference) and len(received) > 10
        for name, tensor in received.items():
            assert torch.equal(tensor, reference[name]), name
    finally:
        ray.kill(trainer)
        ray.kill(receiver)
        ray.shutdown()
