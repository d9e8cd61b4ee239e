"""Loss memory benchmark: the student's loss on the answer positions only (cdscale's path:
`answer_logits` runs the LM head on the kept positions, then forward KL on the top-k),
against materializing full-vocabulary logits and log-probabilities for the whole sequence.

Each path runs in a fresh process, so its peak memory is its own: the CUDA allocator's
peak on GPU, the peak resident set size on CPU (its high-water mark reset after loading the model, so
the model's load does not count).
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_module
from pathlib import Path
from typing import Any

import torch


def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _measure(path: str, model_dir: str, batch_size: int, prompt_len: int, answer_len: int, queue: Any) -> None:
    from transformers import AutoModelForCausalLM

    from benchmarks.student_training import make_records
    from cdscale.student.losses import distillation_loss
    from cdscale.student.trainer import answer_logits, collate

    torch.set_num_threads(1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    records = make_records(batch_size, model.config.vocab_size, prompt_len, answer_len, 20, seed=0)
    batch = {k: v.to(device) for k, v in collate(records, 0).items()}
    if device.type == "cuda":
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS (VmHWM) to the current RSS
        base = _proc_status_bytes("VmRSS")
    if path == "answer_positions":
        logits = answer_logits(model, batch)
    else:  # the whole sequence's logits and log-probabilities, then the answer rows picked out
        full = torch.log_softmax(
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float(), -1
        )
        positions = batch["keep"][batch["cols"]]
        logits = full[batch["rows"], positions]  # log-probabilities, which the loss normalizes again as logits
    distillation_loss(
        "forward_kl_topk", logits, batch["target_ids"], batch["topk_ids"], batch["topk_logprobs"]
    ).backward()
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _proc_status_bytes("VmHWM")
    queue.put(peak - base)


def run(model_dir: Path, batch_size: int, prompt_len: int, answer_len: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    result: dict[str, Any] = {"batch_size": batch_size, "prompt_len": prompt_len, "answer_len": answer_len}
    for path in ("answer_positions", "full_logits"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_measure, args=(path, str(model_dir), batch_size, prompt_len, answer_len, queue))
        proc.start()
        result[f"{path}_peak_bytes"] = _wait_for(proc, queue, path)
        proc.join()
    result["ratio"] = result["full_logits_peak_bytes"] / max(1, result["answer_positions_peak_bytes"])
    return result


def _wait_for(proc: Any, queue: Any, path: str) -> int:
    """The child's answer, or a clear error as soon as the child dies without one."""
    while True:
        try:
            return queue.get(timeout=5)
        except queue_module.Empty:
            if not proc.is_alive():
                raise RuntimeError(
                    f"loss_memory: the {path} process exited with code {proc.exitcode} before reporting its peak memory"
                ) from None


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        (
            "| model | batch x (prompt + answer) tokens | answer positions only, peak MiB "
            "| full logits, peak MiB | full / answer-only |"
        ),
        "| --- | --- | --- | --- | --- |",
    ]
    for model, r in results.items():
        lines.append(
            f"| {model} | {r['batch_size']} x ({r['prompt_len']} + {r['answer_len']}) "
            f"| {r['answer_positions_peak_bytes'] / 2**20:,.0f} | "
            f"{r['full_logits_peak_bytes'] / 2**20:,.0f} | {r['ratio']:.1f}x |"
        )
    return (
        "Peak memory of one forward and backward pass above the loaded model, each path in a fresh process.\n\n"
        + "\n".join(lines)
    )
