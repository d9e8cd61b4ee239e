"""Models with no hub: a tiny Llama built in code, and real weights from registry packages.

A model is named in the config by a folder path, or by one of the prepared names below,
which live in the cdscale cache ($CDSCALE_CACHE, default ~/.cache/cdscale).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from filelock import FileLock

PREPARED = {
    "tiny-addition": "cdscale bootstrap",
    "tiny-arithmetic": "cdscale bootstrap --task arithmetic",
    "tiny-addition-inputs": "cdscale bootstrap --learn-inputs",
    "tiny-addition-4layers": "cdscale bootstrap --layers 4",  # the demo's teacher before 2026-12-07
    # docs/results.md's 1-8 digit runs: the character tokenizer, exactly 1,000 steps
    "tiny-addition-1to8": "cdscale bootstrap --max-digits 8 --steps 1000 --character-tokenizer "
    "--until-sampled-accuracy 0",
    "tiny-addition-1to8-same": "cdscale bootstrap --max-digits 8 --same-length --steps 3000 --max-restarts 0",
    "tiny-addition-1to8-same-p4096": "cdscale bootstrap --max-digits 8 --same-length --problems 4096 --steps 3000 "
    "--max-restarts 0",
    "smollm2-135m": "cdscale prepare-model smollm2-135m",
}


def cache_dir() -> Path:
    return Path(os.environ.get("CDSCALE_CACHE", Path.home() / ".cache" / "cdscale"))


def prepared_path(name: str) -> Path:
    return cache_dir() / "models" / name


def build_once(out: Path, build: Callable[[Path], None], force: bool = False) -> Path:
    """The model folder `out`, made by `build(out)` unless it holds a model (config.json)
    already, or again with `force`. Under a file lock: processes that start together on a new
    machine build it once, and the others wait for it."""
    if (out / "config.json").is_file() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if force or not (out / "config.json").is_file():
            build(out)
    return out


def resolve_model_path(path_or_name: str) -> str:
    """A usable model folder for `model.path`, or a clear error that says how to make one."""
    if path_or_name in PREPARED:
        folder = prepared_path(path_or_name)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"model.path: {path_or_name!r} is not prepared yet in {folder}; run `{PREPARED[path_or_name]}` first"
            )
        return str(folder)
    folder = Path(path_or_name).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"model.path: {path_or_name!r} is neither a folder nor a prepared name ({sorted(PREPARED)})"
        )
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model.path: {folder} has no config.json; expected a Hugging Face model folder")
    if not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(f"model.path: {folder} has no *.safetensors weights (cdscale loads safetensors only)")
    return str(folder.resolve())
