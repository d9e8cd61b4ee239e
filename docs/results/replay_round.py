"""Replay one round's distillation data with another learning rate or epoch count, in one
process with plain torch (no Ray, vLLM or DeepSpeed), to compare training settings without
sampling the teacher again.

    python docs/results/replay_round.py runs/addition --lr 6e-4 --epochs 3
    python docs/results/replay_round.py runs/addition --extra-epochs 2              # then 2 at the last rate
    python docs/results/replay_round.py runs/addition --extra-epochs 2 --restart 1  # then 2 warm restarts
    python docs/results/replay_round.py runs/addition --batch-size 32               # another global batch
    python docs/results/replay_round.py runs/addition --model /path/to/model        # another starting student
    python docs/results/replay_round.py runs/addition --temperature 2               # softer targets

It trains a fresh copy of the run's model on round 0's data (RUN_DIR/data/) with cdscale's own
collate, loss and schedule (AdamW, gradient clip, global batch as in `student.batch_size` or `--batch-size`),
and prints the exact-match accuracy on the run's held-out inputs (RUN_DIR/eval/OPERATION/teacher.jsonl)
every 256 steps and at the end of each extra epoch. Extra epochs (`student.until_accuracy`'s)
follow the planned ones at the schedule's last rate, or with `--restart PEAK` each as a cosine
from PEAK x lr down to that rate (a warm restart). Accuracy is teacher-forced: every answer
token and the EOS must be the argmax, which is what greedy decoding gets right. It matches a real run's setup except the
shuffle order and the split of each batch across ranks.
"""

import argparse
import dataclasses
import json
import random
import time
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from cdscale.checkpoint import read_shard
from cdscale.models import resolve_model_path
from cdscale.student.losses import LossSpec, distillation_loss
from cdscale.student.schedule import warmup_cosine
from cdscale.student.trainer import answer_logits, collate
from cdscale.targets import gold_record
from cdscale.tasks import Example, build_task

parser = argparse.ArgumentParser()
parser.add_argument("run_dir", type=Path)
parser.add_argument("--lr", type=float, default=6e-4)
parser.add_argument("--epochs", type=float, default=3)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--extra-epochs", type=int, default=0)
parser.add_argument("--restart", type=float, default=0.0)
parser.add_argument("--batch-size", type=int, default=None, help="the global batch (default: the run's)")
parser.add_argument("--temperature", type=float, default=None, help="student.temperature (default: the run's)")
parser.add_argument("--model", default=None, help="the student's starting weights (default: the run's model.path)")
args = parser.parse_args()
torch.manual_seed(args.seed)

cfg = yaml.safe_load((args.run_dir / "config.yaml").read_text())
student = cfg["student"]
batch_size = args.batch_size or student["batch_size"]
# The run's loss with all its options (older runs' config.yaml lack the newer ones: their defaults).
options = {f.name: student[f.name] for f in dataclasses.fields(LossSpec) if f.name != "name" and f.name in student}
if args.temperature:
    options["temperature"] = args.temperature
loss_spec = LossSpec(student["loss"], **options)
model_path = resolve_model_path(args.model or cfg["model"]["path"])
tokenizer = AutoTokenizer.from_pretrained(model_path)
model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
task = build_task(cfg["task"]["name"], cfg["task"]["options"])
records = read_shard(args.run_dir, 0)[0]

# Runs since 2026-11-27 keep evaluations per operation (eval/OPERATION/); earlier ones in eval/.
eval_files = sorted(args.run_dir.glob("eval/*/teacher.jsonl")) or [args.run_dir / "eval" / "teacher.jsonl"]
if len(eval_files) != 1:
    raise SystemExit(f"{args.run_dir}: replay takes a one-operation run; found {[str(p) for p in eval_files]}")
eval_records = []
for line in open(eval_files[0]):
    row = json.loads(line)
    prompt = tokenizer(task.student_prompt(Example(input=row["input"], gold=row["gold"])))["input_ids"]
    answer = tokenizer(row["gold"], add_special_tokens=False)["input_ids"]
    eval_records.append(dataclasses.asdict(gold_record(prompt, answer, tokenizer.eos_token_id)))


def exact_match() -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(eval_records), 250):
            chunk = eval_records[start : start + 250]
            batch = collate(chunk, 0)
            token_wrong = (answer_logits(model, batch).argmax(-1) != batch["target_ids"]).float()
            correct += (torch.zeros(len(chunk)).index_add_(0, batch["rows"], token_wrong) == 0).sum().item()
    model.train()
    return correct / len(eval_records)


optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=student["weight_decay"])
rng = random.Random(args.seed)
per_epoch = len(records) // batch_size
total = int(per_epoch * args.epochs)
order: list[int] = []
start = time.time()
print(f"before: exact match {exact_match():.3f}", flush=True)
for step in range(total + per_epoch * args.extra_epochs):
    if not order:
        order = list(range(len(records)))
        rng.shuffle(order)
    batch = collate([records[i] for i in order[:batch_size]], 0)
    order = order[batch_size:]
    for group in optimizer.param_groups:
        group["lr"] = args.lr * warmup_cosine(step, total, student["warmup_steps"])
        if step >= total and args.restart:
            last = 0.1 / args.restart  # each restart ends at the planned schedule's last rate
            group["lr"] = args.lr * args.restart * warmup_cosine((step - total) % per_epoch, per_epoch, 0, last)
    loss = distillation_loss(
        loss_spec, answer_logits(model, batch), batch["target_ids"], batch["topk_ids"], batch["topk_logprobs"]
    )
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), student["grad_clip"])
    optimizer.step()
    if (step + 1) % 256 == 0 or (step + 1 >= total and (step + 1 - total) % per_epoch == 0):
        print(
            f"step {step + 1}/{total} loss {loss.item():.3f} exact match {exact_match():.3f} "
            f"({time.time() - start:.0f} s)",
            flush=True,
        )
