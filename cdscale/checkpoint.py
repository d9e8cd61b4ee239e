"""What a run keeps on disk, written so that a crash mid-save never leaves a file or
folder that looks complete: atomic files, the student as a Hugging Face folder, the
resumable state (state/<seq>-round<r>-step<s>/ with the trainer ranks' DeepSpeed files,
their random states and progress.json, pointed to by state/latest.json), and the data shards with their manifest.

Everything is written under a temporary name in the same folder, flushed, then renamed
into place (rename is atomic on POSIX within one filesystem).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from cdscale.config import RunDirDamaged


@dataclass
class Progress:
    """How far a run has come. Committed with the trainers' state (progress.json); a resumed
    run, or ranks restarted after a crash, go on from the last commit's."""

    round: int = 0  # the round under way (rounds before it are done)
    step: int = 0  # optimizer steps of `round` done at the commit (a stop mid-round)
    losses: list[float] = field(default_factory=list)  # step losses of `round` so far
    summary: dict[str, Any] = field(default_factory=dict)  # what summary.json will hold
    # Per open-ended operation, the held-out responses its KL measures are taken on (`eval.py`):
    # sampled once before distillation, so every later measurement uses the same ones.
    references: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> Progress:
        return cls(saved["round"], saved["step"], saved["losses"], saved["summary"], saved.get("references", {}))


def read_json(path: Path, remedy: str) -> Any:
    """A JSON file cdscale wrote; `RunDirDamaged` naming it and `remedy` when it is not JSON."""
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise RunDirDamaged(f"{path}: damaged ({type(err).__name__}: {err}); {remedy}") from None


class RunDirInUse(FileExistsError):
    """Another live process runs on this run directory."""


@contextmanager
def hold_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir` for this process: an OS file lock on `run_dir/.lock`, which the kernel
    releases when the process ends, however it ends (so a resume after kill -9 takes it).
    A second run on the directory meanwhile is refused at once, naming the holder."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _lock_or_refuse(fd, run_dir)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def check_not_in_use(run_dir: Path) -> None:
    """`hold_run_dir`'s refusal without writing anything: checked before the preflight, so a
    second run on a live run's directory is told so, and not of a port or disk the live run holds."""
    path = run_dir / ".lock"
    if path.is_file():
        fd = os.open(path, os.O_RDONLY)
        try:
            _lock_or_refuse(fd, run_dir)
        finally:
            os.close(fd)


def _lock_or_refuse(fd: int, run_dir: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = (run_dir / ".lock").read_text().strip() or "another process"
        raise RunDirInUse(f"{run_dir} is in use by {holder}; wait for that run to end, or stop it") from None


def write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


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
    return _swap_in(tmp, out_dir)


def copy_dir_atomic(src: Path, out_dir: Path) -> Path:
    """Copy a folder to out_dir, replacing what was there only once the copy is whole."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    return _swap_in(tmp, out_dir)


def _swap_in(tmp: Path, out_dir: Path) -> Path:
    """Put the finished folder tmp at out_dir (the old one is moved aside, then removed)."""
    old = out_dir.with_name(f".{out_dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


def rng_state() -> dict[str, Any]:
    """This process's random states (Python, NumPy, torch CPU and CUDA), as plain JSON."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "python": [version, list(internal), gauss_next],
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    import random

    import numpy as np

    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"]:
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


STATE_FILES = "files.json"


def _digest_of(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _file_digest(path: Path) -> dict[str, Any] | OSError:
    """Size and sha256 of a file, or the OSError that reading it raised."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}
    except OSError as err:
        return err


def _digests(paths: list[Path]) -> list[dict[str, Any] | OSError]:
    # In threads (hashlib lets go of the GIL): a state is one large file per rank, and a
    # 7B model's is about 100 GB, over a minute for one core.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(_file_digest, paths))


def _seal(folder: Path) -> None:
    """Write `folder`/files.json (each file's size and sha256), then flush every file to disk.
    `check_state` holds a state to it: a file truncated, overwritten, removed or unreadable
    since the commit is found before a resume loads it (DeepSpeed and safetensors loaders
    would load damaged tensor bytes without a word)."""
    paths = sorted(path for path in folder.rglob("*") if path.is_file())
    files = dict(zip((str(p.relative_to(folder)) for p in paths), _digests(paths)))
    for digest in files.values():
        if isinstance(digest, OSError):
            raise digest  # a file the save just wrote cannot be read back: no commit
    write_json_atomic(folder / STATE_FILES, {"files": files, "sha256": _digest_of(files)})
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def check_state(folder: Path, remedy: str) -> None:
    """`RunDirDamaged`, naming the file and `remedy`, when a file of committed state `folder`
    differs from what its commit wrote (files.json), or cannot be read."""
    sealed = read_json(folder / STATE_FILES, remedy) if (folder / STATE_FILES).is_file() else None
    # Its own digest: a damaged files.json is named, not the file its damage happens to point at.
    if not isinstance(sealed, dict) or _digest_of(sealed.get("files")) != sealed.get("sha256"):
        raise RunDirDamaged(f"{folder / STATE_FILES}: missing or damaged (the list of the state's files); {remedy}")
    paths = [folder / name for name in sealed["files"]]
    for path, found, expected in zip(paths, _digests(paths), sealed["files"].values()):
        if isinstance(found, OSError):
            raise RunDirDamaged(f"{path}: cannot be read ({found.strerror}); {remedy}")
        if found != expected:
            raise RunDirDamaged(f"{path}: damaged (size or sha256 differs from its commit's); {remedy}")


def commit_state(
    run_dir: Path,
    progress: dict[str, Any],
    save: Callable[[Path], None],
    before_rename: Callable[[str], None] | None = None,
) -> Path:
    """Write a resumable state: `save(folder)` fills a temporary folder (the trainer ranks'
    files); copies of config.yaml and data/manifest.json and progress.json go next to them,
    then files.json (every file's size and sha256, which `check_state` holds the state to);
    `before_rename(name)` records the commit (the metrics log's commit event), then one
    rename makes the folder a complete state and an atomic write of state/latest.json points
    to it. Whatever instant the process dies at, `load_latest_state` then finds the previous
    state or this one, both whole. Older states are removed last. Names are never reused: a
    complete state left by a commit that died before its latest.json, or a leftover .tmp
    folder, never blocks a later commit."""
    root = run_dir / "state"
    root.mkdir(parents=True, exist_ok=True)
    seq = 1 + max((_seq(p.name.lstrip(".")) for p in root.iterdir()), default=-1)
    name = f"{seq:04d}-round{progress['round']}-step{progress['step']}"
    tmp = root / f".{name}.tmp"
    tmp.mkdir()
    save(tmp)
    # What the state was trained with, sealed with it: a resume checks the run's own copies against these.
    for path in (run_dir / "config.yaml", run_dir / "data" / "manifest.json"):
        if path.is_file():
            shutil.copyfile(path, tmp / path.name)
    write_json_atomic(tmp / "progress.json", {**progress, "seq": seq})
    _seal(tmp)
    if before_rename is not None:
        before_rename(name)
    os.replace(tmp, root / name)
    write_json_atomic(root / "latest.json", {"state": name})
    for old in root.iterdir():
        if old.is_dir() and old.name != name:
            shutil.rmtree(old, ignore_errors=True)  # older states and leftovers of crashed saves
    return root / name


def _seq(name: str) -> int:
    """The sequence number a state folder's name starts with; -1 for other names."""
    head = name.split("-", 1)[0]
    return int(head) if head.isdigit() else -1


def load_latest_state(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest complete state's folder and progress, or None if the run has none.

    A folder is renamed into place only once whole, so every `NNNN-...` folder is a complete
    state, and `check_state` holds the newest to its files.json. state/latest.json normally
    names the newest; the newest is taken when it does not (a commit that died between its
    rename and latest.json, or a latest.json removed by hand)."""
    root = run_dir / "state"
    folders = root.iterdir() if root.is_dir() else []
    complete = sorted((p for p in folders if _seq(p.name) >= 0 and p.is_dir()), key=lambda p: _seq(p.name))
    latest = root / "latest.json"
    if not complete:
        if latest.is_file():
            named = " ".join(latest.read_text(errors="replace").split())
            raise RunDirDamaged(
                f"{latest} names {named}, and no state folder is under {root}; "
                "the run directory was changed by hand: start a new run"
            )
        return None
    # A commit that died before removing the state before it leaves two whole ones.
    remedy = f"remove {complete[-1]} to resume from {complete[-2].name}" if len(complete) > 1 else "start a new run"
    check_state(complete[-1], remedy)
    return complete[-1], read_json(complete[-1] / "progress.json", remedy)


_MANIFEST_REMEDY = "remove data/ and state/ to regenerate the data and train again, or start a new run"


def _shard_key(round_index: int, refresh: int | None) -> str:
    """A shard's key in data/manifest.json: "r" for a round's data, "r.j" for refresh j of round r."""
    return str(round_index) if refresh is None else f"{round_index}.{refresh}"


def write_shard(
    run_dir: Path, round_index: int, records: list[dict[str, Any]], counts: dict[str, int], refresh: int | None = None
) -> None:
    """A round's distillation data (or one refresh's: `data.refresh_every_steps`) as Parquet
    (`datasets.load_dataset("parquet", data_files=...)`, pandas and pyarrow read it as it is),
    then its entry in data/manifest.json (size, hash, counts). Records of several kinds share
    one table: a field one kind lacks is null in its rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = f"round_{round_index}.parquet" if refresh is None else f"round_{round_index}_refresh_{refresh}.parquet"
    fields = dict.fromkeys(key for record in records for key in record)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({key: [record.get(key) for record in records] for key in fields}), sink)
    data = sink.getvalue().to_pybytes()
    write_bytes_atomic(run_dir / "data" / name, data)
    manifest = _manifest(run_dir)
    manifest[_shard_key(round_index, refresh)] = {
        "file": name,
        "records": len(records),
        "sha256": hashlib.sha256(data).hexdigest(),
        "counts": counts,
    }
    write_json_atomic(run_dir / "data" / "manifest.json", manifest)


def _manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "data" / "manifest.json"
    manifest = read_json(path, _MANIFEST_REMEDY) if path.is_file() else {}
    if not isinstance(manifest, dict) or not all(
        isinstance(e, dict) and {"file", "sha256", "counts"} <= e.keys() for e in manifest.values()
    ):
        raise RunDirDamaged(f"{path}: not a manifest of data shards; {_MANIFEST_REMEDY}")
    return manifest


def _shard_bytes(run_dir: Path, entry: dict[str, Any]) -> bytes:
    """A shard's bytes, checked against its manifest entry."""
    path = run_dir / "data" / str(entry["file"])
    try:
        data = path.read_bytes() if path.is_file() else b""
    except OSError as err:
        raise RunDirDamaged(f"{path}: cannot be read ({err.strerror}); {_MANIFEST_REMEDY}") from None
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise RunDirDamaged(
            f"{path}: does not match data/manifest.json (changed or truncated since it was written); "
            "remove both to regenerate"
        )
    return data


def check_run_files(run_dir: Path, state: Path | None) -> None:
    """`RunDirDamaged`, naming the file, unless what a resume from committed `state` reads
    outside it is as the commit left it: config.yaml the one the state was trained with, and
    the data manifest with the state's shards (and any written after it), each whole."""
    if state is not None and (state / "config.yaml").is_file():
        config = run_dir / "config.yaml"
        if not config.is_file() or config.read_bytes() != (state / "config.yaml").read_bytes():
            raise RunDirDamaged(
                f"{config}: not the config that {state.name} was trained with (changed since); "
                f"restore it from {state / 'config.yaml'}, or start a new run"
            )
    live = _manifest(run_dir)
    if state is not None and (state / "manifest.json").is_file():
        for key, entry in read_json(state / "manifest.json", _MANIFEST_REMEDY).items():
            if live.get(key) != entry:
                raise RunDirDamaged(
                    f"{run_dir / 'data' / 'manifest.json'}: lost or changed round {key}'s entry since {state.name}; "
                    f"restore it from {state / 'manifest.json'}, or start a new run"
                )
    for entry in live.values():
        _shard_bytes(run_dir, entry)


def read_shard(
    run_dir: Path, round_index: int, refresh: int | None = None
) -> tuple[list[dict[str, Any]], dict[str, int]] | None:
    """A committed round's (or refresh's) data and counts (checked against the manifest), or
    None. Runs written before 2026-12-03 have JSON-lines shards (`round_<r>.jsonl`), read as such."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    entry = _manifest(run_dir).get(_shard_key(round_index, refresh))
    if entry is None:
        return None
    data = _shard_bytes(run_dir, entry)
    if str(entry["file"]).endswith(".jsonl"):
        return [json.loads(line) for line in data.decode().splitlines()], entry["counts"]
    return pq.read_table(pa.BufferReader(data)).to_pylist(), entry["counts"]
