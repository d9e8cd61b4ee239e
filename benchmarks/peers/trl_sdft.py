"""Peer benchmark: TRL's SDFTTrainer on cdscale's scratchpad addition.

TRL's self-distillation fine-tuning (`trl.experimental.sdft`, trl >= 1.0) trains a model to
match, on the same completion tokens, its own distributions given a privileged context. This
script runs it on the task cdscale's demo distils (addition, 1-3 digit operands) so that its
wall time and examples/s can be set beside cdscale's. It does NOT run in the project's venv
(no trl there): make a separate one, see benchmarks/peers/TRL_SDFT_NOTES.md:

    python3 -m venv /tmp/trlvenv && /tmp/trlvenv/bin/pip install torch==2.13.0 trl==1.16.0
    cp -r ~/.cache/cdscale/models/tiny-addition /tmp/tiny-addition   # never train in the cache
    TRL_EXPERIMENTAL_SILENCE=1 /tmp/trlvenv/bin/python benchmarks/peers/trl_sdft.py \\
        --model /tmp/tiny-addition --mode on_policy --steps 100 --eval-every 25 --out /tmp/on.json

`sdft_config_kwargs` / `from_cdscale_config` (pure, no trl import) translate cdscale's settings
into SDFTConfig kwargs; tests/test_peer_sdft.py checks them against cdscale's Config defaults.

It imports only `cdscale.tasks`, `cdscale.student.schedule` and `benchmarks.common` from this
checkout (pure Python, PyYAML and torch), so the prompts, the
scoring and the held-out partition are the project's own.

How the task is mapped (SDFT's teacher is the student prompt plus a privileged context):
  prompt              = task.student_prompt(x)   "Input:\\n{x}\\nAnswer:\\n"
  privileged_context  = the scratchpad "<scratch>...</scratch>": the gold one (--context gold)
                        or the model's own greedy one, made once before training (--context self,
                        closer to cdscale, whose teacher conditions on its own scratchpad)
  teacher text        = --teacher-text stock: TRL's template "{prompt}{privileged_context}\\n",
                        i.e. "Input:\\n{x}\\nAnswer:\\n<scratch>...</scratch>\\n" (the keyword stays
                        "Answer:", which a model bootstrapped on "Target:" never saw);
                        --teacher-text exact: the same with "Answer:" replaced by "Target:", i.e.
                        task.teacher_prompt(x) + scratchpad + "\\n", exactly what cdscale's teacher
                        has read when it writes its answer (done by overriding one method of
                        TRL's DemonstrationTeacherContextBuilder, not by a TRL option)
  completion          = the answer digits + EOS, sampled by the *current* weights:
                        --mode on_policy  from the student prompt  (generate_from_teacher=False)
                        --mode off_policy from the teacher text    (generate_from_teacher=True)
  loss                = divergence over the completion tokens; --loss forward_kl_topk (default) is
                        topk_logits with alpha 0 (forward KL) and the tail bucket, like cdscale's,
                        but TRL takes the top-k support from the STUDENT's logits, cdscale from the
                        teacher's, and TRL averages per completion, cdscale per token.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# cdscale losses and data sources that have a faithful SDFT counterpart; the others (sampled_soft,
# jsd with cdscale's beta convention, hard, mixed sources, a recursive teacher) have none.
_LOSSES = {
    "forward_kl_topk": {"distillation_mode": "topk_logits", "distillation_alpha": 0.0, "distillation_add_tail": True},
    "reverse_kl_sampled": {"distillation_mode": "sampled_token", "distillation_alpha": 1.0},
}
_SOURCES = {"student": False, "teacher": True}


def sdft_config_kwargs(
    *,
    steps: int,
    output_dir: str,
    source: str = "student",
    loss: str = "forward_kl_topk",
    top_k: int = 20,
    lr: float = 6e-4,
    weight_decay: float = 0.0,
    warmup_steps: int = 50,
    grad_clip: float = 1.0,
    batch_size: int = 64,
    sampling_temperature: float = 1.0,
    loss_temperature: float = 1.0,
    teacher_mode: str = "frozen",
    dtype: str = "float32",
    gradient_checkpointing: bool = False,
    max_completion_length: int = 16,
    seed: int = 0,
    use_cpu: bool = True,
) -> dict:
    """cdscale-like settings (names as in `cdscale config`: data.source, student.loss, teacher.top_k,
    student.lr, ...) -> keyword arguments of TRL's SDFTConfig. Pure: needs neither trl nor torch.

    The learning-rate schedule maps to HF's `cosine_with_min_lr` (min_lr_rate 0.1) with the same
    warm-up; cdscale's `warmup_cosine` multiplies the warm-up into a cosine that starts at step 0,
    so the script replaces the scheduler by that exact function (`--schedule cdscale`)."""
    if loss not in _LOSSES:
        raise ValueError(f"loss {loss!r} has no SDFT counterpart; supported: {sorted(_LOSSES)}")
    if source not in _SOURCES:
        raise ValueError(f"source {source!r} has no SDFT counterpart; supported: {sorted(_SOURCES)}")
    if loss == "reverse_kl_sampled" and source != "student":
        raise ValueError("reverse_kl_sampled needs on-policy data (source student), as in cdscale")
    if teacher_mode != "frozen":
        raise ValueError("only cdscale's frozen teacher maps (SDFT teacher_model_kind 'base')")
    if sampling_temperature != loss_temperature:
        raise ValueError("SDFT uses one temperature for sampling and for both models' logits")
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype {dtype!r}: float32 or bfloat16")
    if steps < 1 or batch_size < 1 or top_k < 1:
        raise ValueError("steps, batch_size and top_k must be positive")
    return {
        "output_dir": output_dir,
        "max_steps": steps,
        "per_device_train_batch_size": batch_size,  # one process: the global batch, in completions
        "gradient_accumulation_steps": 1,
        "num_generations": 1,  # one response per input, as cdscale samples one y per x
        "learning_rate": lr,
        "weight_decay": weight_decay,
        "max_grad_norm": grad_clip,
        "warmup_steps": warmup_steps,
        "lr_scheduler_type": "cosine_with_min_lr",
        "lr_scheduler_kwargs": {"min_lr_rate": 0.1},
        "temperature": sampling_temperature,
        "top_k": 0,  # sample from the full distribution, like cdscale's vLLM teacher
        "top_p": 1.0,
        "max_prompt_length": 512,
        "max_completion_length": max_completion_length,
        **_LOSSES[loss],
        "distillation_topk": top_k,  # TRL takes this top-k from the student's logits, cdscale from the teacher's
        "teacher_model_kind": "base",
        "generate_from_teacher": _SOURCES[source],
        "teacher_prompt_template": "{prompt}{privileged_context}\n",
        "model_init_kwargs": {"dtype": dtype},
        "bf16": dtype == "bfloat16",  # TRL's own default is bf16 autocast, even on CPU
        "fp16": False,
        "gradient_checkpointing": gradient_checkpointing,  # TRL's own default is True
        "logging_steps": 1,
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": use_cpu,
        "seed": seed,
        "dataloader_num_workers": 0,
    }


def from_cdscale_config(cfg, *, steps: int, output_dir: str, use_cpu: bool = True) -> dict:
    """SDFTConfig kwargs for a cdscale `Config` (duck-typed: cdscale is not imported here)."""
    s, t = cfg.student, cfg.teacher
    if s.lora.r:
        raise ValueError("LoRA students are not mapped (SDFT would take a peft_config)")
    return sdft_config_kwargs(
        steps=steps,
        output_dir=output_dir,
        source=cfg.data.source,
        loss=s.loss,
        top_k=t.top_k,
        lr=s.lr,
        weight_decay=s.weight_decay,
        warmup_steps=s.warmup_steps,
        grad_clip=s.grad_clip,
        batch_size=s.batch_size,
        sampling_temperature=t.temperature,
        loss_temperature=s.temperature,
        teacher_mode=t.mode,
        dtype=cfg.model.dtype,
        gradient_checkpointing=s.gradient_checkpointing,
        max_completion_length=cfg.eval.max_new_tokens_student,
        seed=cfg.data.seed,
        use_cpu=use_cpu,
    )


def with_cdscale_schedule(trainer_cls: type, warmup_steps: int) -> type:
    """`trainer_cls` with cdscale's learning-rate schedule (`warmup_cosine` over the run's
    steps) instead of HF's, exactly."""
    import torch

    from cdscale.student.schedule import warmup_cosine

    class Trainer(trainer_cls):
        def create_scheduler(self, num_training_steps, optimizer=None):
            if self.lr_scheduler is None:
                opt = optimizer if optimizer is not None else self.optimizer
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                    opt, lambda step: warmup_cosine(step, num_training_steps, warmup_steps)
                )
                self._created_lr_scheduler = True
            return super().create_scheduler(num_training_steps, optimizer)

    return Trainer


def greedy(model, tok, prompts: list[str], max_new_tokens: int, batch: int = 128) -> list[str]:
    import torch

    was_training = model.training
    model.eval()
    tok.padding_side = "left"
    out = []
    with torch.no_grad():
        for i in range(0, len(prompts), batch):
            enc = tok(prompts[i : i + batch], return_tensors="pt", padding=True).to(model.device)
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            out += tok.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    model.train(was_training)
    return out


def accuracy(task, examples, texts) -> float:
    return sum(task.score(x, task.extract_answer(t)) for x, t in zip(examples, texts)) / max(1, len(examples))


def own_scratchpads(model, tok, task, examples) -> tuple[list[str], int]:
    """The model's own greedy scratchpad for each input (cut after </scratch>), as cdscale's
    teacher would write it; an input where it writes none gets what it wrote (counted)."""
    from cdscale.tasks.addition import SCRATCH_CLOSE, SCRATCH_OPEN

    longest = max(len(tok(task.teacher_demonstration(x), add_special_tokens=False)["input_ids"]) for x in examples)
    texts = greedy(model, tok, [task.teacher_prompt(x) for x in examples], longest + 8)
    pads, missing = [], 0
    for t in texts:
        end = t.find(SCRATCH_CLOSE)
        if t.startswith(SCRATCH_OPEN) and end >= 0:
            pads.append(t[: end + len(SCRATCH_CLOSE)])
        else:
            pads.append(t.strip())
            missing += 1
    return pads, missing


def build_parser() -> argparse.ArgumentParser:
    """The CLI; its defaults are cdscale's (`cdscale config`), checked by tests/test_peer_sdft.py."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="/tmp/tiny-addition", help="HF folder (a copy of the cdscale tiny teacher)")
    p.add_argument("--mode", choices=["on_policy", "off_policy"], default="on_policy")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps (max_steps)")
    p.add_argument("--batch-size", type=int, default=64, help="completions per step (cdscale student.batch_size)")
    p.add_argument("--num-prompts", type=int, default=0, help="training inputs (0: steps * batch size, all used once)")
    p.add_argument("--lr", type=float, default=6e-4, help="peak lr (cdscale student.lr)")
    p.add_argument("--warmup-steps", type=int, default=50, help="cdscale student.warmup_steps")
    p.add_argument(
        "--schedule",
        choices=["cdscale", "hf"],
        default="cdscale",
        help="cdscale: cdscale's warmup_cosine over --steps (exact); hf: HF cosine_with_min_lr (close)",
    )
    p.add_argument("--top-k", type=int, default=20, help="distillation_topk (cdscale teacher.top_k)")
    p.add_argument("--loss", choices=sorted(_LOSSES), default="forward_kl_topk", help="cdscale student.loss")
    p.add_argument("--context", choices=["gold", "self"], default="gold", help="privileged scratchpad source")
    p.add_argument("--teacher-text", choices=["stock", "exact"], default="exact")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-completion-length", type=int, default=16, help="cdscale eval.max_new_tokens_student")
    p.add_argument("--min-digits", type=int, default=1)
    p.add_argument("--max-digits", type=int, default=3)
    p.add_argument("--eval", type=int, default=500, help="held-out sums for greedy accuracy (0: skip)")
    p.add_argument("--eval-every", type=int, default=0, help="also evaluate the student every N steps (0: no)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--grad-ckpt", action="store_true", help="TRL's default gradient_checkpointing=True; off here")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="results JSON path")
    return p


def main() -> None:
    a = build_parser().parse_args()

    import torch

    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(a.threads)
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer
    from trl.experimental.sdft.sdft_trainer import DemonstrationTeacherContextBuilder

    from benchmarks.common import machine
    from cdscale.tasks import sample_where
    from cdscale.tasks.addition import Addition, scratchpad

    task = Addition(a.min_digits, a.max_digits)
    tok = AutoTokenizer.from_pretrained(a.model, padding_side="left", truncation_side="left")
    # Plain-text prompts: SDFT applies a chat template only to conversational (list-of-messages)
    # prompts, so the character tokenizer (no chat_template) needs none.
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=getattr(torch, a.dtype))

    num_prompts = a.num_prompts or a.steps * a.batch_size
    train_x = sample_where(task, num_prompts, random.Random(f"trl-sdft-train-{a.seed}"), held_out=False)
    eval_x = (
        sample_where(task, a.eval, random.Random(f"trl-sdft-eval-{a.seed}"), held_out=True, distinct=True)
        if a.eval
        else []
    )
    t0 = time.perf_counter()
    if a.context == "gold":
        contexts, missing = [scratchpad(x.meta["a"], x.meta["b"]) for x in train_x], 0
    else:
        contexts, missing = own_scratchpads(model, tok, task, train_x)
    context_s = time.perf_counter() - t0
    rows = [{"prompt": task.student_prompt(x), "privileged_context": c} for x, c in zip(train_x, contexts)]

    def teacher_text(x, context: str) -> str:
        s = task.student_prompt(x) + context + "\n"
        return s.replace("\nAnswer:\n", "\nTarget:\n", 1) if a.teacher_text == "exact" else s

    def student_accuracy(m) -> float:
        return accuracy(task, eval_x, greedy(m, tok, [task.student_prompt(x) for x in eval_x], a.max_completion_length))

    results: dict = {
        "peer": "trl.experimental.sdft.SDFTTrainer",
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
        "machine": f"{machine()}, {torch.get_num_threads()} threads",
        "args": vars(a),
        "num_prompts": num_prompts,
        "mapping": {
            "student_prompt_example": rows[0]["prompt"],
            "teacher_text_example": teacher_text(train_x[0], contexts[0]),
            "context_missing_scratchpad": missing,
            "context_seconds": context_s,
        },
    }
    if eval_x:
        t0 = time.perf_counter()
        results["student_accuracy_before"] = student_accuracy(model)
        gold_ctx = [scratchpad(x.meta["a"], x.meta["b"]) for x in eval_x]
        results["teacher_accuracy_with_gold_context"] = accuracy(
            task, eval_x, greedy(model, tok, [teacher_text(x, c) for x, c in zip(eval_x, gold_ctx)], 16)
        )
        longest = max(len(tok(task.teacher_demonstration(x), add_special_tokens=False)["input_ids"]) for x in eval_x)
        results["teacher_accuracy_own_scratchpad"] = accuracy(
            task, eval_x, greedy(model, tok, [task.teacher_prompt(x) for x in eval_x], longest + 8)
        )
        results["eval_seconds_before"] = time.perf_counter() - t0
    del model  # the trainer loads the student (and the base teacher) from the path itself

    class Probe(TrainerCallback):
        """Step times, and the held-out greedy accuracy every `eval_every` steps (its time is
        kept apart so that the training time excludes it)."""

        def __init__(self):
            self.times: list[float] = []
            self.curve: list[dict] = []
            self.eval_s = 0.0
            self.start = time.perf_counter()

        def on_step_begin(self, args, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kw):
            self.times.append(time.perf_counter() - self._t)
            if a.eval_every and eval_x and state.global_step % a.eval_every == 0 and state.global_step < a.steps:
                t = time.perf_counter()
                acc = student_accuracy(model)
                self.eval_s += time.perf_counter() - t
                train_s = time.perf_counter() - self.start - self.eval_s
                self.curve.append({"step": state.global_step, "train_seconds": train_s, "student_accuracy": acc})
                print(f"step {state.global_step}: student accuracy {acc:.3f} after {train_s:.0f}s", flush=True)

    Trainer = with_cdscale_schedule(SDFTTrainer, a.warmup_steps) if a.schedule == "cdscale" else SDFTTrainer

    with tempfile.TemporaryDirectory() as tmp:
        kwargs = sdft_config_kwargs(
            steps=a.steps,
            output_dir=tmp,
            source="student" if a.mode == "on_policy" else "teacher",
            loss=a.loss,
            top_k=a.top_k,
            lr=a.lr,
            warmup_steps=a.warmup_steps,
            batch_size=a.batch_size,
            sampling_temperature=a.temperature,
            loss_temperature=a.temperature,
            dtype=a.dtype,
            gradient_checkpointing=a.grad_ckpt,
            max_completion_length=a.max_completion_length,
            seed=a.seed,
            use_cpu=not torch.cuda.is_available(),
        )
        results["sdft_config_kwargs"] = {k: v for k, v in kwargs.items() if k != "output_dir"}
        config = SDFTConfig(**kwargs)
        probe = Probe()
        trainer = Trainer(
            model=a.model,
            args=config,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            callbacks=[probe],
        )
        if a.teacher_text == "exact":

            class ExactTeacherText(DemonstrationTeacherContextBuilder):
                def _compose_teacher_prompt(self, prompt, privileged_context):
                    text = super()._compose_teacher_prompt(prompt, privileged_context)
                    return text.replace("\nAnswer:\n", "\nTarget:\n", 1)

            trainer.teacher_context_builder = ExactTeacherText(trainer)

        t0 = probe.start = time.perf_counter()
        trainer.train()
        wall_s = time.perf_counter() - t0
        train_s = wall_s - probe.eval_s
        examples = a.steps * a.batch_size
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        results.update(
            {
                "train_wall_seconds": wall_s,
                "train_seconds": train_s,
                "periodic_eval_seconds": probe.eval_s,
                "completions_trained": examples,
                "examples_per_s": examples / train_s,
                "step_seconds_first": probe.times[0] if probe.times else None,
                "step_seconds_median_rest": statistics.median(probe.times[1:]) if len(probe.times) > 1 else None,
                "loss_first": losses[0] if losses else None,
                "loss_last": losses[-1] if losses else None,
                "lr_logged": [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h][:3],
                "accuracy_curve": probe.curve,
                "log_history": trainer.state.log_history,
            }
        )
        if eval_x:
            t0 = time.perf_counter()
            results["student_accuracy_after"] = student_accuracy(trainer.model)
            results["accuracy_curve"].append(
                {"step": a.steps, "train_seconds": train_s, "student_accuracy": results["student_accuracy_after"]}
            )
            # SDFT's teacher and generator are the student's own weights (base teacher: a frozen copy),
            # so also check what training did to the model's answer after the teacher text.
            results["trained_model_accuracy_with_gold_context"] = accuracy(
                task, eval_x, greedy(trainer.model, tok, [teacher_text(x, c) for x, c in zip(eval_x, gold_ctx)], 16)
            )
            outs = greedy(trainer.model, tok, [task.student_prompt(x) for x in eval_x[:8]], a.max_completion_length)
            results["student_samples_after"] = [
                {"input": x.input, "gold": x.gold, "output": o} for x, o in zip(eval_x[:8], outs)
            ]
            results["eval_seconds_after"] = time.perf_counter() - t0

    text = json.dumps(results, indent=2, default=str)
    if a.out:
        Path(a.out).write_text(text + "\n")
    keys = (
        "versions",
        "num_prompts",
        "train_wall_seconds",
        "train_seconds",
        "examples_per_s",
        "step_seconds_first",
        "step_seconds_median_rest",
        "loss_first",
        "loss_last",
        "lr_logged",
        "student_accuracy_before",
        "student_accuracy_after",
        "teacher_accuracy_with_gold_context",
        "teacher_accuracy_own_scratchpad",
        "trained_model_accuracy_with_gold_context",
        "student_samples_after",
        "eval_seconds_before",
        "accuracy_curve",
    )
    print(json.dumps({k: results.get(k) for k in keys}, indent=2, default=str))


if __name__ == "__main__":
    main()
