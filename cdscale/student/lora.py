"""LoRA students (peft): the adapters a rank trains, and the two forms the student leaves in.

- The adapter alone, in peft's format (`adapter_model.safetensors` + `adapter_config.json`):
  what an adapter sync sends to the engines (vLLM applies it per request) and what the run's
  `student/adapter/` holds (`PeftModel.from_pretrained(base, folder)` loads it).
- The base weights with the adapter merged in, under the model's own Hugging Face names: what
  a full-weight sync sends and what the run's `student/` holds (loads without peft).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from cdscale.config import LoraConfig
    from cdscale.sync.packing import PackedWeights

ADAPTER = "default"  # peft's name for a model's one adapter
_WRAPPER = "base_model.model."  # where peft puts the wrapped model


def peft_config(lora: LoraConfig) -> Any:
    """peft's `LoraConfig` for the student's `student.lora`."""
    from peft import LoraConfig as PeftLoraConfig

    targets: str | list[str] = "all-linear" if lora.target_modules == ["all-linear"] else lora.target_modules
    return PeftLoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets, task_type="CAUSAL_LM"
    )


def add_adapters(model: torch.nn.Module, lora: LoraConfig) -> torch.nn.Module:
    """`model` with LoRA adapters on `lora.target_modules`; only the adapters require grad."""
    from peft import get_peft_model

    return get_peft_model(model, peft_config(lora))


@dataclass
class WeightEntry:
    """One weight of the model under its Hugging Face name, and the parameters it is made of:
    the parameter itself, or a base weight and its adapter's A and B, merged as W + s B A."""

    name: str
    params: list[torch.nn.Parameter]
    scaling: float | None = None

    def full(self) -> torch.Tensor:
        """The weight (its parameters must be whole: gathered under ZeRO-3)."""
        if self.scaling is None:
            return self.params[0]
        base, a, b = self.params
        with torch.no_grad():
            return base + (self.scaling * (b @ a)).to(base.dtype)


def weight_entries(module: torch.nn.Module) -> list[WeightEntry]:
    """The weights an engine loads, in parameter order: with adapters, each adapted base
    weight merged with its A and B, and the names without peft's wrapping."""
    from peft.tuners.lora import LoraLayer

    adapted = {f"{name}.base_layer.weight": m for name, m in module.named_modules() if isinstance(m, LoraLayer)}
    entries = []
    for name, p in module.named_parameters():
        if ".lora_" in name:
            continue  # merged into its base weight
        layer = adapted.get(name)
        hf_name = name.removeprefix(_WRAPPER).replace(".base_layer.", ".")
        if layer is None:
            entries.append(WeightEntry(hf_name, [p]))
            continue
        if getattr(layer, "fan_in_fan_out", False):
            raise NotImplementedError(f"{hf_name}: LoRA on a transposed (Conv1D) weight is not supported")
        pair = [layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight]
        entries.append(WeightEntry(hf_name, [p, *pair], layer.scaling[ADAPTER]))
    return entries


def adapter_parameters(module: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The adapter's parameters under the names peft saves them with (no adapter name)."""
    return [(name.replace(f".{ADAPTER}.", "."), p) for name, p in module.named_parameters() if ".lora_" in name]


def adapter_config(module: torch.nn.Module) -> dict[str, Any]:
    """The adapter's `adapter_config.json`, as peft writes it (sets as sorted lists)."""
    config = module.peft_config[ADAPTER].to_dict()
    return {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}


def write_adapter(folder: Path, adapter: PackedWeights, config: dict[str, Any]) -> None:
    """An adapter folder that peft and vLLM load: the tensors and the config."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({name: t.contiguous() for name, t in adapter.named_tensors()}, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, default=str))
