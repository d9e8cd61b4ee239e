"""A tiny Llama and its tokenizer (characters, plus a few pieces of the tasks' markup), built in code (no download).

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
# A space and the digit, plus or comma after it are one token: spaced numbers ("2 9 + 5 7"),
# the scratchpad's lines and answers take fewer tokens than one character at a time.
SPACED = [" " + c for c in string.digits + "+,"]


def build_tokenizer(spaced_pieces: bool = True) -> PreTrainedTokenizerFast:
    """The tiny model's tokenizer: one token per character, the markup pieces and (with
    `spaced_pieces`) " 0" ... " 9", " +", " ," and " C:". Models bootstrapped before these
    pieces (2026-12-05) carry the character-only tokenizer in their own folder, which is what
    every command loads; `spaced_pieces=False` rebuilds it."""
    pieces = SPECIAL + CHARS + (SPACED if spaced_pieces else [])
    vocab = {tok: i for i, tok in enumerate(pieces)}
    # BPE whose only merges join a space to the character after it; every other piece is one
    # character. The decoder joins the pieces back verbatim.
    merges = [(" ", piece[1]) for piece in SPACED] if spaced_pieces else []
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tok.add_tokens(MARKUP + ([" C:"] if spaced_pieces else []))
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
    seed: int = 0,
    spaced_pieces: bool = True,
) -> Path:
    """Write a randomly initialised tiny Llama + tokenizer to out_dir and return it."""
    import torch

    torch.manual_seed(seed)
    tok = build_tokenizer(spaced_pieces)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=512,
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
