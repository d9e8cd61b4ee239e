"""The two forms a LoRA student leaves a rank in, checked against peft's own: the merged
weights against `merge_and_unload`, the adapter against `save_pretrained`."""

import json

import pytest
import torch
from safetensors.torch import load_file

from cdscale.config import LoraConfig
from cdscale.models.tiny import build_tiny_llama
from cdscale.student.lora import adapter_config, adapter_parameters, add_adapters, weight_entries, write_adapter
from cdscale.sync.packing import pack


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    base = build_tiny_llama(tmp_path_factory.mktemp("tiny"), hidden_size=64, num_layers=2, intermediate_size=128)
    model = add_adapters(
        AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, alpha=8.0, target_modules=["q_proj", "down_proj"])
    )
    torch.manual_seed(0)
    with torch.no_grad():  # B starts at zero; a trained adapter does not
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.normal_(0, 0.1)
    return base, model


def test_only_the_adapters_train(adapted):
    _, model = adapted
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert any("q_proj" in n for n in trainable) and any("down_proj" in n for n in trainable)
    assert not any("k_proj" in n for n in trainable)


def test_merged_weights_are_peft_merge_and_unload(adapted):
    import copy

    _, model = adapted
    merged = {w.name: w.full() for w in weight_entries(model)}
    reference = copy.deepcopy(model).merge_and_unload().state_dict()
    assert set(merged) == set(reference) - {"lm_head.weight"}  # the head is tied to the embeddings
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, reference[name], rtol=0, atol=1e-6)
    adapted_names = [w.name for w in weight_entries(model) if w.scaling is not None]
    assert len(adapted_names) == 4 and all(n.endswith(("q_proj.weight", "down_proj.weight")) for n in adapted_names)


def test_the_adapter_folder_is_what_peft_saves_and_loads(adapted, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, model = adapted
    model.save_pretrained(tmp_path / "peft")
    ours = tmp_path / "ours"
    write_adapter(ours, pack([(n, p.detach()) for n, p in adapter_parameters(model)], copy=True), adapter_config(model))
    theirs, mine = (
        load_file(tmp_path / "peft" / "adapter_model.safetensors"),
        load_file(ours / "adapter_model.safetensors"),
    )
    assert set(theirs) == set(mine)
    assert all(torch.equal(theirs[k], mine[k]) for k in theirs)
    config = json.loads((ours / "adapter_config.json").read_text())
    reference = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    for key in ("r", "lora_alpha", "peft_type", "task_type", "base_model_name_or_path"):
        assert config[key] == reference[key]
    assert sorted(config["target_modules"]) == sorted(reference["target_modules"])
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), ours).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model.eval()(ids).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("sync, transport, engine_rank", [("adapter", "adapter", 16), ("merged", "object_store", 0)])
def test_the_lora_sync_mode_picks_the_transport_and_the_engines_lora_support(sync, transport, engine_rank):
    from cdscale.config import load_config
    from cdscale.sync import make_weight_sync
    from cdscale.teacher.engine import EngineSettings

    cfg = load_config(None, ["student.lora.r=16", f"student.lora.sync={sync}"])
    assert make_weight_sync(cfg).transport == transport
    assert EngineSettings.from_config(cfg, "m").max_lora_rank == engine_rank
    assert EngineSettings.from_config(load_config(None, []), "m").max_lora_rank == 0  # full fine-tuning
