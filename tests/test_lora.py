"""LoRA students on the real stack: two DeepSpeed ranks under ZeRO-2 and ZeRO-3 train only
adapters, a sync moves the adapter alone into a running vLLM engine, which applies it per
request, and the teacher's path through the same engine stays the base model's exactly."""

import json
import os
import random
import signal
from pathlib import Path

import pytest
import ray
import torch

from cdscale.config import load_config
from cdscale.eval import score_responses
from cdscale.placement import start_local_ray
from cdscale.preflight import commit_bytes
from cdscale.sync import EngineWeights
from cdscale.sync.adapter import AdapterSync
from cdscale.sync.object_store import export_weights
from cdscale.tasks import build_task
from cdscale.teacher.engine import EngineSettings
from cdscale.teacher.group import EngineGroup
from tests.test_resume import after_last_commit, events, finish, kill_group, sha, start, state_bytes, wait_for

pytestmark = pytest.mark.stack

RANK = 8


@pytest.mark.seconds(85)
def test_lora_ranks_sync_their_adapter_and_the_teachers_path_stays_the_base_model(teacher_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cdscale.build_targets import TargetBuilder
    from cdscale.student.group import TrainerGroup
    from cdscale.student.lora import write_adapter

    task = build_task("addition", {"min_digits": 1, "max_digits": 2})
    tokenizer = AutoTokenizer.from_pretrained(teacher_model)
    prompts = [tokenizer(task.teacher_prompt(x))["input_ids"] for x in task.sample_inputs(6, random.Random(9))]
    greedy = [{"temperature": 0.0, "max_tokens": 24, "logprobs": 5}] * len(prompts)
    start_local_ray(num_cpus=3, include_dashboard=False)
    settings = EngineSettings(str(teacher_model), "float32", 256, 0.25, 21, enforce_eager=True, max_lora_rank=RANK)
    engines = EngineGroup(settings, timeout_s=300, chunk_size=8).start(1)
    sync, groups = AdapterSync(300), []
    try:
        base = engines.generate(prompts, greedy, "base model")
        for version, zero in enumerate((2, 3), start=1):
            cfg = load_config(
                None,
                [
                    f"model.path={teacher_model}",
                    f"run.output_root={tmp_path}",
                    "student.batch_size=8",
                    "student.lr=2e-2",  # adapters that visibly change the answers in a few steps
                    f"student.zero_stage={zero}",
                    f"student.lora.r={RANK}",
                    "student.lora.alpha=16",
                    "teacher.max_new_tokens=64",
                ],
            )
            group = TrainerGroup.from_config(cfg, str(teacher_model)).start()
            groups.append(group)
            counts = group.parameters
            assert 0 < counts["trainable"] < 0.1 * counts["total"], counts
            builder = TargetBuilder(cfg, tokenizer, engines)
            [(records, _)], _ = builder.teacher([(task, task.sample_inputs(32, random.Random(5 + zero)), 1)], 0)
            for step in range(4):
                _train_step(group, records[step * 8 : (step + 1) * 8])
            full_bytes = ray.get(export_weights(group.actors, 300)).nbytes
            stats, held = sync.push(group.actors, engines.engines, version)
            assert held == EngineWeights(version, held.packed, adapter=True) and held.packed is not None
            assert 0 < stats.bytes < full_bytes / 10, (stats.bytes, full_bytes)
            student = engines.generate(prompts, greedy, f"student v{version}")
            assert [o["token_ids"] for o in student] != [o["token_ids"] for o in base]  # the adapter moved something

            # The engine's student equals Hugging Face generate on the merged weights the ranks
            # export, and on the base model with the adapter in peft's format.
            merged = AutoModelForCausalLM.from_pretrained(teacher_model, dtype=torch.float32).eval()
            missing, unexpected = merged.load_state_dict(
                dict(ray.get(export_weights(group.actors, 300)).named_tensors()), strict=False
            )
            assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied to the embeddings
            adapter, config = ray.get(export_weights(group.actors, 300, "export_adapter"))
            write_adapter(tmp_path / f"adapter{version}", adapter, config)
            with_adapter = PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(teacher_model, dtype=torch.float32), tmp_path / f"adapter{version}"
            ).eval()
            for prompt, out in zip(prompts, student):
                for hf in (merged, with_adapter):
                    hf_ids = hf.generate(
                        input_ids=torch.tensor([prompt]),
                        max_new_tokens=24,
                        do_sample=False,
                        pad_token_id=tokenizer.pad_token_id,
                    )[0, len(prompt) :].tolist()
                    assert out["token_ids"] == hf_ids

            # Scoring with the adapter (prompt logprobs: the context gap, an ensemble teacher)
            # equals the base model plus the adapter in Hugging Face.
            scored = score_responses(engines, prompts, [o["token_ids"] for o in student], "score")
            for prompt, out, engine_lps in zip(prompts, student, scored):
                ids = torch.tensor([prompt + out["token_ids"]])
                with torch.no_grad():
                    logprobs = torch.log_softmax(with_adapter(input_ids=ids).logits[0, len(prompt) - 1 : -1], -1)
                expected = logprobs.gather(1, ids[0, len(prompt) :, None])[:, 0]
                torch.testing.assert_close(torch.tensor(engine_lps), expected, rtol=0, atol=2e-4)

            # Back to version 0 (a frozen teacher): the adapter is dropped, nothing reloads, and
            # the teacher's answers and logprobs are the base model's bit for bit.
            sync.load(engines.engines, sync.initial(group.actors))
            again = engines.generate(prompts, greedy, "base model again")
            assert [(o["token_ids"], o["logprob_values"]) for o in again] == [
                (o["token_ids"], o["logprob_values"]) for o in base
            ]

            if zero == 3:
                _check_a_saved_adapter_resumes(group, records, tmp_path / "state")
            group.kill()  # its CPUs go to the next group

        # Killing the engines leaves none of the adapter folders they wrote.
        folders = ray.get([e.__ray_call__.remote(lambda engine: engine.adapter_tmp.name) for e in engines.engines])
        assert all(Path(folder).is_dir() for folder in folders)
        engines.kill()
        assert not any(Path(folder).exists() for folder in folders)
    finally:
        engines.kill()
        for group in groups:
            group.kill()
        ray.shutdown()


def _check_a_saved_adapter_resumes(group, records, folder):
    """save_state keeps the adapters and their optimizer state (not the frozen base): new
    ranks that load it take the same next step as the ranks that saved it."""
    group.call("save_state", str(folder))
    _train_step(group, records[:8])
    expected = ray.get(export_weights(group.actors, 300, "export_adapter"))[0]
    group.restart()
    group.call("load_state", str(folder))
    _train_step(group, records[:8])
    resumed = ray.get(export_weights(group.actors, 300, "export_adapter"))[0]
    assert expected.names == resumed.names
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(expected.named_tensors(), resumed.named_tensors()))


def _train_step(group, batch):
    """One optimizer step of the two ranks, each on its half of `batch`."""
    ray.get([t.train_step.remote(batch[r::2], 2e-2) for r, t in enumerate(group.actors)])


@pytest.mark.seconds(150)
def test_a_lora_run_killed_with_sigkill_resumes_and_loses_and_duplicates_nothing(teacher_model, tmp_path):
    """A LoRA run (adapter sync) whose driver is killed with SIGKILL in round 1's training
    resumes from round 0's commit: round 1's data comes from disk, every step of round 1 is
    trained once in what is kept, and the ranks take round 1's first steps with the losses the
    killed run had, so the adapters and their optimizer state came back as they were."""
    run_dir = tmp_path / "lora"
    settings = [
        f"model.path={teacher_model}",
        f"run.output_root={tmp_path}",
        "run.name=lora",
        "task.options.max_digits=2",
        "run.rounds=2",
        "data.num_train=64",
        "data.num_eval=8",
        "student.batch_size=16",
        "student.epochs=2",
        "student.steps_per_call=1",
        "student.warmup_steps=2",
        f"student.lora.r={RANK}",
        "teacher.num_engines=1",
        "teacher.max_new_tokens=64",
        "teacher.enforce_eager=true",
        "run.timeout_s=300",
    ]
    proc = start(settings)
    wait_for(proc, run_dir, 0, lambda e: e["event"] == "train" and e["round"] == 1 and e["step"] >= 2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    kill_group(proc)
    killed = events(run_dir)
    mark = after_last_commit(run_dir)
    shards = [run_dir / "data" / f"round_{r}.parquet" for r in (0, 1)]
    data = [sha(shard) for shard in shards]

    code, out = finish(start(["--resume", str(run_dir)]), 600)
    assert code == 0, out[-3000:]
    assert "reusing the" in out  # round 1's data came from disk, not from the engine again
    assert [sha(shard) for shard in shards] == data
    resumed = events(run_dir, mark)
    steps = json.loads((run_dir / "summary.json").read_text())["round_1"]["steps"]
    assert [e["step"] for e in resumed if e["event"] == "train"] == list(range(steps))
    before = {e["step"]: e["loss"] for e in killed[mark:] if e["event"] == "train"}
    after = {e["step"]: e["loss"] for e in resumed if e["event"] == "train"}
    assert len(before) >= 3
    for step in range(3):  # the first without an update since the commit, then two with the restored Adam state
        assert after[step] == pytest.approx(before[step], rel=1e-5), step
    assert {e["transport"] for e in killed + resumed if e["event"] == "sync"} == {"adapter"}
    assert (run_dir / "student" / "adapter" / "adapter_config.json").is_file()
    assert state_bytes(run_dir) >= commit_bytes(str(teacher_model), load_config(str(run_dir / "config.yaml")))
