"""Methods mixed into vLLM's worker (`worker_extension_cls`), called via `collective_rpc`.

`reload_weights` rewrites the weights in place through the model runner, which also
handles backends that repack weights after loading (the CPU backend does;
`model.load_weights` alone fails there).
"""
from __future__ import annotations

import torch


class WeightReloadExtension:
    def reload_named_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> None:
        self.model_runner.reload_weights(weights_iterator=iter(named_tensors), is_checkpoint_format=True)

    def weight_checksum(self) -> float:
        """Sum of all parameters, to check that a sync arrived (tests, debugging)."""
        return float(sum(p.detach().double().sum() for p in self.model_runner.get_model().parameters()))
