"""`cdscale bootstrap`: give the tiny model the teacher's skill the paper starts from.

The paper's addition teacher is T5-small fine-tuned on scratchpad examples (section 3.3).
Here a randomly initialised tiny Llama learns scratchpad addition from the task's own
demonstrations (fresh samples every step), with a plain PyTorch loop: this prepares a
model once; distillation itself runs on the Ray + vLLM + DeepSpeed stack.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cdscale.models.tiny import build_tiny_llama
from cdscale.student.schedule import warmup_cosine
from cdscale.tasks import Task, sample_where

log = logging.getLogger(__name__)


def demonstration_batch(
    tasks: list[Task], tokenizer, n: int, rng: random.Random, learn_inputs: bool = False
) -> dict[str, torch.Tensor]:
    """Teacher prompt + gold completion + EOS, each from a task chosen uniformly; loss on the
    completion only. With `learn_inputs`, every fourth sequence is instead a list of 1-4
    inputs in the task's input-generation layout, with the loss on all of it: a tiny model
    has no pretraining that taught it to continue such a list, and this lets it write new
    inputs when few-shot prompted (synthetic D, `inputs: synthetic`)."""
    seqs, starts = [], []
    # One task draws its n inputs as before (the same stream, so the same tiny-addition).
    picked = (
        [(tasks[0], x) for x in sample_where(tasks[0], n, rng, held_out=False)]
        if len(tasks) == 1
        else [(task, sample_where(task, 1, rng, held_out=False)[0]) for task in (rng.choice(tasks) for _ in range(n))]
    )
    for j, (task, x) in enumerate(picked):
        if learn_inputs and j % 4 == 3:
            shots = sample_where(task, rng.randint(1, 4), rng, held_out=False)
            seqs.append(tokenizer(task.input_generation_prompt(shots) + x.input + "\n")["input_ids"])
            starts.append(1)
            continue
        prompt = tokenizer(task.teacher_prompt(x))["input_ids"]
        completion = tokenizer(task.teacher_demonstration(x), add_special_tokens=False)["input_ids"]
        seqs.append(prompt + completion + [tokenizer.eos_token_id])
        starts.append(len(prompt))
    length = max(map(len, seqs))
    ids = torch.full((n, length), tokenizer.pad_token_id)
    labels = torch.full((n, length), -100)
    for i, (seq, start) in enumerate(zip(seqs, starts)):
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, start : len(seq)] = torch.tensor(seq[start:])
    return {"input_ids": ids, "attention_mask": (labels != -100) | (ids != tokenizer.pad_token_id), "labels": labels}


@torch.no_grad()
def greedy_accuracy(model, tokenizer, task: Task, n: int, seed: int, student: bool = False) -> float:
    """Exact-match accuracy of greedy Hugging Face generation (left-padded batch)."""
    model.eval()
    examples = sample_where(task, n, random.Random(seed), held_out=True, distinct=True)
    prompts = [task.student_prompt(x) if student else task.teacher_prompt(x) for x in examples]
    # Room for the longest gold completion and a few tokens more (an 8 + 8 digit scratchpad is
    # about 330 tokens): a model that does not stop costs no more than that.
    golds = [x.gold if student else task.teacher_demonstration(x) for x in examples]
    max_new_tokens = max(len(tokenizer(g, add_special_tokens=False)["input_ids"]) for g in golds) + 8
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    model.train()
    return sum(task.score(x, task.extract_answer(t)) for x, t in zip(examples, texts)) / n


@dataclass
class BootstrapSettings:
    steps: int = 1200
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0
    eval_every: int = 10**9  # also measure the greedy accuracy every this many steps (always at the end)
    learn_inputs: bool = False  # see `demonstration_batch`


def bootstrap(task: Task | list[Task], out_dir: Path, settings: BootstrapSettings | None = None) -> dict:
    """Train a tiny Llama on the teacher demonstrations of one task (or a uniform mixture of
    several) and save it to out_dir atomically. Progress goes to the `cdscale.bootstrap` logger."""
    s = settings or BootstrapSettings()
    steps, batch_size, lr, seed, eval_every, learn_inputs = (
        s.steps,
        s.batch_size,
        s.lr,
        s.seed,
        s.eval_every,
        s.learn_inputs,
    )
    tasks = task if isinstance(task, list) else [task]
    torch.manual_seed(seed)
    rng = random.Random(f"bootstrap-{seed}")
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    build_tiny_llama(tmp, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(tmp)
    model = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    warmup = min(100, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, steps, warmup))
    start = time.time()
    history = []
    for step in range(1, steps + 1):
        loss = model(**demonstration_batch(tasks, tokenizer, batch_size, rng, learn_inputs)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0:
            log.info("bootstrap step %d/%d loss %.4f (%.0fs)", step, steps, loss.item(), time.time() - start)
        if step % eval_every == 0 or step == steps:
            acc = sum(
                greedy_accuracy(model, tokenizer, t, 200 // len(tasks), seed + 10_000 + step) for t in tasks
            ) / len(tasks)
            history.append({"step": step, "loss": loss.item(), "teacher_accuracy": acc, "seconds": time.time() - start})
            log.info("bootstrap step %d: teacher greedy accuracy %.3f", step, acc)
    model.save_pretrained(tmp, safe_serialization=True)
    info = {
        "task": [t.name for t in tasks],
        "learn_inputs": learn_inputs,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "history": history,
    }
    (tmp / "cdscale_bootstrap.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return info
