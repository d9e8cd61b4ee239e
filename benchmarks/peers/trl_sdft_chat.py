"""Peer benchmark: TRL's SDFTTrainer on cdscale's system-prompt task (a chat model, LoRA).

The same run as `cdscale run --config configs/system_prompt_onpolicy.yaml`, done by TRL's
self-distillation trainer: SmolLM2-135M-Instruct learns to answer without the system prompt
as it answers with it. Run it from TRL's venv (benchmarks/peers/README.md), with peft added:

    /tmp/trlvenv/bin/pip install peft==0.21.2
    cp -r ~/.cache/cdscale/models/smollm2-135m /tmp/smollm2-135m   # never train in the cache
    TRL_EXPERIMENTAL_SILENCE=1 HF_HUB_OFFLINE=1 /tmp/trlvenv/bin/python benchmarks/peers/trl_sdft_chat.py \\
        --config configs/system_prompt_onpolicy.yaml --model /tmp/smollm2-135m --out /tmp/trl_chat.json

How the config maps (the config's own task renders every prompt with the model's chat
template, so both tools read the same text):
  prompt              = task.student_prompt(x): the user turn, without the system prompt
  privileged_context  = task.teacher_prompt(x): the same with it; TRL's teacher reads this text
                        as it is (its teacher_prompt_template, which would put the context into
                        the user turn, is bypassed by overriding one method of
                        DemonstrationTeacherContextBuilder)
  inputs              = the run's own: cdscale.inputs.sample_splits on the config (the held-out
                        prompts and round 0's training prompts, drawn with repeats)
  LoRA                = student.lora through cdscale's own peft mapping; SDFT's "base" teacher is
                        the model with the adapter disabled, as cdscale's frozen teacher is the
                        engine without the adapter
  steps, schedule     = num_train / batch_size x epochs; cdscale's warmup_cosine
  responses           = on-policy (data.source student; generate_from_teacher False) or off-policy
                        (teacher), up to teacher.max_new_tokens; TRL samples every step with the
                        current weights, cdscale every data.refresh_every_steps steps
  loss                = forward KL on the top-k plus a tail bucket (TRL takes the top-k from the
                        student's logits, cdscale from the teacher's)
  evaluation          = greedy, eval.max_new_tokens_student tokens, the task's checks on the
                        held-out prompts, before and after (and the teacher's, with the prompt)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/system_prompt_onpolicy.yaml")
    p.add_argument("--model", default="/tmp/smollm2-135m", help="HF folder (a copy of the packaged SmolLM2)")
    p.add_argument("--source", choices=["student", "teacher"], default=None, help="default: the config's data.source")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--out", default=None, help="results JSON path")
    p.add_argument("overrides", nargs="*", help="section.field=value, as for cdscale run (e.g. data.seed=1)")
    a = p.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    import peft
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer
    from trl.experimental.sdft.sdft_trainer import DemonstrationTeacherContextBuilder

    from benchmarks.common import machine
    from benchmarks.peers.trl_sdft import greedy, sdft_config_kwargs, with_cdscale_schedule
    from cdscale.config import load_config, resolve_stages
    from cdscale.inputs import build_tasks, sample_splits
    from cdscale.student.lora import peft_config

    cfg = load_config(a.config, a.overrides)
    s, source = cfg.student, a.source or cfg.data.source
    stages = resolve_stages(cfg)
    tasks = build_tasks(stages)
    [(name, task)] = tasks.items()
    tok = AutoTokenizer.from_pretrained(a.model)
    task.use_tokenizer(tok, cfg.teacher.max_model_len)
    held_out, rounds = sample_splits(cfg, stages, tasks)
    eval_x, train_x = held_out[name], rounds[0][name]
    rows = [{"prompt": task.student_prompt(x), "privileged_context": task.teacher_prompt(x)} for x in train_x]
    steps = len(train_x) // s.batch_size * s.epochs

    def rules(model, prompt) -> dict[str, float]:
        texts = greedy(model, tok, [prompt(x) for x in eval_x], cfg.eval.max_new_tokens_student, batch=len(eval_x))
        return {c.name: sum(c.passes(t) for t in texts) / len(texts) for c in task.checks}

    results: dict = {
        "peer": "trl.experimental.sdft.SDFTTrainer",
        "versions": {
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "peft": peft.__version__,
        },
        "machine": f"{machine()}, {torch.get_num_threads()} threads",
        "config": a.config,
        "overrides": a.overrides,
        "source": source,
        "steps": steps,
        "prompts": len(rows),
        "eval_prompts": len(eval_x),
        "student_prompt_example": rows[0]["prompt"],
        "teacher_prompt_example": rows[0]["privileged_context"],
    }
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    results["teacher_rules"] = rules(model, task.teacher_prompt)
    results["student_rules_before"] = rules(model, task.student_prompt)
    results["eval_seconds_before"] = time.perf_counter() - t0
    del model

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self._t)

    class SystemPromptTeacher(DemonstrationTeacherContextBuilder):
        def _compose_teacher_prompt(self, prompt, privileged_context):
            return privileged_context  # the teacher's whole prompt, rendered by the task

    with tempfile.TemporaryDirectory() as tmp:
        kwargs = sdft_config_kwargs(
            steps=steps,
            output_dir=tmp,
            source=source,
            loss=s.loss,
            top_k=cfg.teacher.top_k,
            lr=s.lr,
            weight_decay=s.weight_decay,
            warmup_steps=s.warmup_steps,
            grad_clip=s.grad_clip,
            batch_size=s.batch_size,
            sampling_temperature=cfg.teacher.temperature,
            loss_temperature=s.temperature,
            dtype=cfg.model.dtype,
            max_completion_length=cfg.teacher.max_new_tokens,
            seed=cfg.data.seed,
            use_cpu=not torch.cuda.is_available(),
        )
        results["sdft_config_kwargs"] = {k: v for k, v in kwargs.items() if k != "output_dir"}
        probe = StepTimes()
        trainer = with_cdscale_schedule(SDFTTrainer, s.warmup_steps)(
            model=a.model,
            args=SDFTConfig(**kwargs),
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            peft_config=peft_config(s.lora),
            callbacks=[probe],
        )
        trainer.teacher_context_builder = SystemPromptTeacher(trainer)
        t0 = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        results["student_rules_after"] = rules(trainer.model, task.student_prompt)
        results["eval_seconds_after"] = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    results.update(
        {
            "train_seconds": train_s,
            "examples_per_s": steps * s.batch_size / train_s,
            "step_seconds_median": statistics.median(probe.times) if probe.times else None,
            "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None,
        }
    )
    text = json.dumps(results, indent=2, default=str)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
