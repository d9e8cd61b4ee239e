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
        model = self.model_runner.get_model()
        lm_head = getattr(model, "lm_head", None)
        if lm_head is not None and getattr(model.config, "tie_word_embeddings", False):
            # A tied lm_head gets no checkpoint tensor of its own, so the reload skips its
            # post-processing and the CPU backend keeps computing logits from its stale
            # packed copy of the old embeddings. Re-pack it from the new shared weight.
            lm_head.quant_method.process_weights_after_loading(lm_head)

    def weight_checksum(self) -> float:
        """Sum of the parameters the model exposes, a quick sign that a sync arrived. Not a
        full check: on the CPU backend the linear layers' weights live in packed oneDNN
        handles and are not among them (measured: halving one down_proj changed the
        outputs, not this sum). Compare generations to check the weights themselves."""
        return float(sum(p.detach().double().sum() for p in self.model_runner.get_model().parameters()))
