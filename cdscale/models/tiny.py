"""A tiny Llama and a character-level tokenizer, both built in code (no download).

Saved as a normal Hugging Face folder, so transformers, vLLM and DeepSpeed read it
like any other checkpoint. head_dim is 64 because vLLM's CPU attention rejects 16.
"""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Tokenizer, decoders, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
# Multi-character pieces of the scratchpad markup and prompts get one token each.
MARKUP = ["<scratch>", "</scratch>", "Input:", "Target:", "Answer:", "C:"]
CHARS = list(string.digits + string.ascii_letters + string.punctuation + " \n")


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIAL + CHARS)}
    # BPE with no merges = one token per character; the decoder joins them back verbatim.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tok.add_tokens(MARKUP)
    # Prompts start with <s>; vLLM and transformers both apply this post-processor.
    from tokenizers.processors import TemplateProcessing

    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.bos_token_id)]
    )
    return tok


def build_tiny_llama(
    out_dir: str | Path,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 2,
    intermediate_size: int = 512,
    max_positions: int = 512,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised tiny Llama + tokenizer to out_dir and return it."""
    import torch

    torch.manual_seed(seed)
    tok = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        torch_dtype="float32",
    )
    if config.head_dim < 32:
        raise ValueError(f"head_dim {config.head_dim} < 32: vLLM's CPU attention needs at least 32")
    model = LlamaForCausalLM(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
