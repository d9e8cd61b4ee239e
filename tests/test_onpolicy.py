"""On-policy distillation on the real stack: a frozen teacher, responses mixed between the
teacher and the student (data.source=mixed), refreshed every few steps. The driver is killed
with SIGKILL after a refresh's data is committed and resumed: nothing committed is generated
again, every step is trained once in what is kept, and the one engine group swaps between
the student (sampling, and evaluation at each refresh) and the frozen teacher (reading). The
student's records are checked against Hugging Face on the same weights: their targets are the
tokens the student drew, and their rows are the teacher's logprobs with the context and its
own scratchpad, at those tokens' positions.
"""

import hashlib
import json
import os
import signal

import pytest
import torch

from cdscale.checkpoint import read_shard
from tests.test_resume import after_last_commit, events, finish, kill_group, start, wait_for

pytestmark = pytest.mark.stack

SETTINGS = [
    "task.options.max_digits=2",
    "run.rounds=1",
    "data.num_train=96",
    "data.num_eval=16",
    "data.source=mixed",
    "data.refresh_every_steps=4",  # 96 inputs / batch 8 = 12 steps: 3 refreshes of 32 inputs
    "eval.every_refreshes=1",  # the student before refreshes 1 and 2 too
    "student.batch_size=8",
    "student.epochs=1",
    "student.steps_per_call=1",
    "student.warmup_steps=2",
    "student.num_ranks=1",  # what is checked does not depend on the ranks; one process fewer per run
    "teacher.num_engines=1",
    "teacher.max_new_tokens=96",
    # The barely trained student often answers without the answer's markup: its skips are
    # counted, and a refresh fails only below one batch.
    "teacher.max_answer_skip_fraction=0.75",
    "run.timeout_s=300",
    "teacher.enforce_eager=true",
]


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.seconds(140)
def test_mixed_on_policy_refreshes_swap_the_engines_and_resume_after_kill_9(teacher_model, tmp_path):
    run_dir = tmp_path / "onpolicy"
    proc = start([f"model.path={teacher_model}", f"run.output_root={tmp_path}", "run.name=onpolicy", *SETTINGS])
    wait_for(proc, run_dir, 0, lambda e: e["event"] == "targets" and e.get("refresh") == 1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    kill_group(proc)
    before_kill = events(run_dir)
    shards = {j: run_dir / "data" / f"round_0_refresh_{j}.parquet" for j in range(3)}
    kept = {j: sha(shards[j]) for j in (0, 1)}

    mark = after_last_commit(run_dir) if any(e["event"] == "commit" for e in before_kill) else 0
    code, out = finish(start(["--resume", str(run_dir)]), 900)
    assert code == 0, out[-3000:]
    assert "reusing the" in out  # refreshes 0 and 1 came from disk, not from the engines again
    assert {j: sha(shards[j]) for j in (0, 1)} == kept
    resumed = events(run_dir, mark)

    # Every step once in what is kept: the resumed run trained all 12 from the round's start.
    assert [e["step"] for e in resumed if e["event"] == "train"] == list(range(12))
    for j in range(3):
        rows = read_shard(run_dir, 0, j)[0]
        assert len({(r["operation"], r["index"]) for r in rows}) == len(rows) >= 8
        assert {r["source"] for r in rows} == {"teacher", "student"}  # mixed: both answered

    # One engine group, two weight sets: before refreshes 1 and 2 the student's weights at
    # that step go in for sampling, then the frozen teacher's (version 0) for reading.
    swaps = [
        (e["event"], e["version"], e.get("step"))
        for e in before_kill + resumed
        if e["event"] in ("sync", "reload") and e["round"] == 0
    ]
    assert swaps[:2] == [("sync", 1, 4), ("reload", 0, 4)]
    assert swaps[-3:] == [("sync", 1, 8), ("reload", 0, 8), ("sync", 1, None)]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["round_0"]["refreshes"] == 3 and summary["round_0"]["steps"] == 12
    # The learning curve: the student evaluated on the weights each refresh sampled from, so
    # no sync beyond those above; each point once, though refresh 1 began before the kill too.
    curve = summary["curve"]["addition"]
    assert [(p["round"], p["step"], p["n"]) for p in curve] == [(0, 4, 16), (0, 8, 16)]
    assert all(0 <= p["accuracy"] <= 1 and p["seconds"] > 0 for p in curve)

    _check_student_records_against_hf(teacher_model, read_shard(run_dir, 0, 0)[0])


def _check_student_records_against_hf(model_path, rows, task=None) -> None:
    """Refresh 0 samples from the untrained student, which is the teacher's model: HF on
    those weights gives both the sampled tokens' logprobs and the teacher's rows. `task`: one
    whose teacher reasons first (default: 2-digit addition)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cdscale.tasks import Example, build_task

    task = task or build_task("addition", {"max_digits": 2})
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    hf = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    students = [r for r in rows if r["source"] == "student"]
    assert students
    gaps = []
    for r in students:
        x = Example(r["input"], r["gold"])
        y, first = list(r["sample_token_ids"]), r["sample_answer_start"]
        answer = list(r["input_ids"][r["answer_start"] :])
        # The targets are the student's own tokens, after its prompt without the context.
        assert list(r["input_ids"][: r["answer_start"]]) == tokenizer(task.student_prompt(x))["input_ids"]
        assert answer == y[first : first + len(answer)]
        # The teacher reads its own scratchpad, then the student's answer where its own would be.
        reasoning = list(r["teacher_reasoning_ids"])
        assert "</scratch>" in tokenizer.decode(reasoning) and task.answer_span(tokenizer.decode(reasoning)) is None
        teacher_prompt = tokenizer(task.teacher_prompt(x))["input_ids"] + reasoning
        student_prompt = list(r["input_ids"][: r["answer_start"]])
        with torch.no_grad():
            teacher = torch.log_softmax(hf(torch.tensor([teacher_prompt + y[first:]])).logits[0].float(), -1)
            student = torch.log_softmax(hf(torch.tensor([student_prompt + y])).logits[0].float(), -1)
        for j, token in enumerate(answer):  # the logits at a position predict the next token
            ids, logprobs = torch.tensor(r["topk_ids"][j]), torch.tensor(r["topk_logprobs"][j])
            real = torch.isfinite(logprobs)
            assert token in ids[real].tolist()
            gaps.append((teacher[len(teacher_prompt) + j - 1][ids[real]] - logprobs[real]).abs().max())
            gaps.append((student[len(student_prompt) + first + j - 1][token] - r["sample_logprobs"][j]).abs())
    assert max(gaps) < 2e-4, max(gaps)
