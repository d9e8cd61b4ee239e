"""Atomic writes: a crash mid-save never leaves a file or folder that looks complete.

Everything is written under a temporary name in the same folder, flushed, then renamed
into place (rename is atomic on POSIX within one filesystem).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def save_hf_checkpoint(named_weights: list[tuple[str, torch.Tensor]], source_model: str, out_dir: Path) -> Path:
    """Save trainer weights as a Hugging Face folder (config + tokenizer from the source model).

    Loadable by `AutoModelForCausalLM.from_pretrained` and by vLLM.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    config = AutoConfig.from_pretrained(source_model)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(dict(named_weights), strict=False, assign=True)
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"checkpoint {out_dir}: weights missing from the trainer export: {missing[:5]}")
    model.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(source_model).save_pretrained(tmp)
    old = out_dir.with_name(f".{out_dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir
