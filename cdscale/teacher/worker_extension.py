"""Methods mixed into vLLM's worker (`worker_extension_cls`), called via `collective_rpc`.

`reload_weights` rewrites the weights in place through the model runner, which also
handles backends that repack weights after loading (the CPU backend does;
`model.load_weights` alone fails there).
"""

from __future__ import annotations

import time

import torch

from cdscale.sync.broadcast import BucketPlan, SyncGroup, close_group, open_group, receive


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

    def receive_broadcast_weights(self, group: SyncGroup, first_rank: int, plan: list[BucketPlan]) -> dict[str, float]:
        """Join the sync group as rank first_rank + this worker's rank in its engine, receive
        every bucket of `plan`, then reload (a tensor-parallel worker keeps its shard)."""
        start = time.perf_counter()
        device = torch.device("cuda", torch.cuda.current_device()) if group.backend == "nccl" else torch.device("cpu")
        members = open_group(group, first_rank + self.rank)
        try:
            named = receive(members, plan, device)
        finally:
            close_group(members, group.backend)
        received = time.perf_counter()
        self.reload_named_weights(named)
        return {
            "bytes": sum(t.nbytes for _, t in named),
            "receive_s": received - start,
            "reload_s": time.perf_counter() - received,
        }

    def unwrap_lora_logits(self) -> None:
        """Compute logits with the plain lm_head in an engine started with LoRA support.

        vLLM 0.32 wraps the logits processor for adapters that train the output head, and on
        the CPU backend that wrapper fails on every `prompt_logprobs` request (it indexes the
        prompt's positions with the sampled rows' adapter mapping: "einsum(): subscript b has
        size 32 ... 137"; vLLM issues #16668, #29955). cdscale's adapters never train the head
        or the embeddings (`config._check_lora`), so the wrapper only adds zeros: without it,
        prompt logprobs with an adapter equal Hugging Face on the base model plus the adapter
        (measured on the tiny model, 2026-12-04)."""
        model = self.model_runner.get_model()
        wrapped = getattr(model, "logits_processor", None)
        if wrapped is not None and hasattr(wrapped, "base_layer"):
            model.logits_processor = wrapped.base_layer

    def weight_checksum(self) -> float:
        """Sum of the parameters the model exposes, a quick sign that a sync arrived. Not a
        full check: on the CPU backend the linear layers' weights live in packed oneDNN
        handles and are not among them (measured: halving one down_proj changed the
        outputs, not this sum). Compare generations to check the weights themselves."""
        return float(sum(p.detach().double().sum() for p in self.model_runner.get_model().parameters()))
