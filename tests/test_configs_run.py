"""Every config in configs/ runs end to end on the real stack (Ray, vLLM, DeepSpeed) at small
sizes, so that no config can rot.

A run starts Ray actors, vLLM engines and DeepSpeed ranks, tens of seconds each time; a run
per config would cost more than the rest of the suite. So the configs that share a model
family, a teacher mode and a loss run as one: each config's stages become stages of one run,
its operations renamed `<config>.<operation>`, with small sizes (a few inputs per operation,
one or two held-out problems, one epoch, a greedy teacher). Every stage and operation of
every config then goes through its task (options and data files), inputs, targets,
training, sync and evaluation of the student. What the merge does not keep per config: the
teacher's token cap and context length are the largest in the group (the SmolLM2 group's cap
at most 48 tokens: its chat responses, which run to the cap, are kept cut, and a SQL answer,
8 to 39 tokens in CI, still fits), the student's answers are cut at STUDENT_TOKENS, an
addition task's operands have at most 2 digits (what the tiny stand-in learned: one that
writes 8-digit scratchpads costs a minute more to bootstrap), the teacher is not evaluated
(`eval.before: false`), a chat response cut at the teacher's token cap is kept
(`keep_truncated`), and the other settings (learning rate, top-k, ...) are the first
config's, except that the student is a LoRA student when a config
of the group has one (the SmolLM2 group: its training takes half the time, and full
fine-tuning runs in the tiny groups and the stack tests), synced merged into the base weights
(`lora.sync: merged`): vLLM on CPU decoded and scored with the adapter about 5x more slowly,
which took the run's evaluation from 20 s to 47 s alone on 2 CPUs (2026-12-05); the adapter
transport runs in tests/test_lora.py. tests/test_config.py loads each config as it is. The
models are stand-ins of each family: a tiny Llama bootstrapped for a few hundred steps on the
tiny configs' tasks (answers in each task's format, and inputs for synthetic D), and the real
SmolLM2-135M-Instruct.
"""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import ray
import yaml

from cdscale.config import Config, load_config, resolve_stages
from cdscale.placement import start_local_ray

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parent.parent
# Per model family: SmolLM2 trains at tens of tokens/s on 2 CPUs, and a SQL prompt is ~600 tokens.
# Two inputs per operation with a batch of one: a run goes on when one input gives no answer (a
# synthetic review the teacher answered with an empty turn, in CI; a SQL answer cut off), since
# every operation must keep at least one batch.
# `cpus_per_rank`: Ray gives an actor as many torch threads as the CPUs it reserves (it sets
# OMP_NUM_THREADS), and the engine idles while the student trains, so SmolLM2's one rank takes
# both cores (Ray is told of one CPU more than the machine has): its training is most of the run.
SMALL = {
    "tiny": {"num_train": 8, "num_eval": 2, "batch_size": 2, "cpus_per_rank": 1, "addition_max_digits": 2},
    "smollm2": {"num_train": 2, "num_eval": 1, "batch_size": 1, "cpus_per_rank": 2, "teacher_tokens": 48},
}
STUDENT_TOKENS = 24  # the student's answers in the smoke's evaluation: its accuracy is not what it checks


def _groups() -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {}
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(str(path))
        family = "smollm2" if cfg.model.path.startswith("smollm2") else "tiny"
        groups.setdefault(f"{family}-{cfg.teacher.mode}-{cfg.student.loss}", []).append(path)
    return groups


GROUPS = _groups()


def merged_config(paths: list[Path], model: Path, out: Path, small: dict) -> Config:
    """One run of every stage of `paths`, at small sizes, on `model`. The k-th stages of the
    configs run as one stage (fewer trainings, syncs and commits), except those of a config
    with an operation that mixes the inputs of its stage's operations (`inputs: mixed`): its
    stages run on their own, so that its operations mix only among themselves."""
    configs = [(path.stem, load_config(str(path))) for path in paths]
    stages: dict = {}
    for name, cfg in configs:
        own = resolve_stages(cfg)
        apart = any(op.inputs == "mixed" for stage in own for op in stage.operations)
        for k, stage in enumerate(own):
            key = f"{name}.{stage.name}" if apart else f"stage{k}"
            merged = stages.setdefault(key, {"name": key, "rounds": stage.rounds, "operations": []})
            merged["rounds"] = max(merged["rounds"], stage.rounds)
            for op in stage.operations:
                num_train = small["num_train"] if op.num_train else 0  # 0: evaluated only
                merged_op = {**dataclasses.asdict(op), "name": f"{name}.{op.name}", "num_train": num_train}
                merged_op["num_eval"] = small["num_eval"] if op.num_eval else 0  # 0: trained only
                merged_op["synthetic_top_up"] = 1 if op.synthetic_top_up and num_train else 0
                if op.task.name == "chat":  # a response cut at the token cap still trains: a run
                    merged_op["task"]["options"]["keep_truncated"] = True  # of two inputs needs one kept
                options = merged_op["task"]["options"]
                # A problems file is the distribution itself (its problems' lengths are fixed).
                if op.task.name == "addition" and "addition_max_digits" in small and "problems" not in options:
                    # 8: the addition task's own default, when a config gives no max_digits.
                    options["max_digits"] = min(options.get("max_digits", 8), small["addition_max_digits"])
                    options["min_digits"] = min(options.get("min_digits", 1), options["max_digits"])
                merged["operations"].append(merged_op)
    first = configs[0][1]
    tree = {
        "model": {"path": str(model), "dtype": first.model.dtype},
        "data": {
            "num_train": small["num_train"],
            "num_eval": small["num_eval"],
            "num_validation": small["num_eval"],
            "seed": 0,
        },
        # Greedy teacher: the same answers (and so the same skips) on every machine.
        "teacher": {
            "num_engines": 1,
            "mode": first.teacher.mode,
            "temperature": 0.0,
            "max_answer_skip_fraction": 1.0,
            "kv_cache_gib": 0.25,
            "enforce_eager": True,  # no torch.compile at start-up
            "max_new_tokens": min(
                small.get("teacher_tokens", math.inf), max(cfg.teacher.max_new_tokens for _, cfg in configs)
            ),
            "max_model_len": max(cfg.teacher.max_model_len for _, cfg in configs),
        },
        "student": {
            "num_ranks": 1,
            "cpus_per_rank": small["cpus_per_rank"],
            "loss": first.student.loss,
            "batch_size": small["batch_size"],
            "epochs": 1,
            "warmup_steps": 1,
            # A config that trains to a criterion: out of reach here, so one extra epoch per round.
            "until_accuracy": max(cfg.student.until_accuracy for _, cfg in configs),
            "max_extra_epochs": 1,
            "lora": next(
                (
                    {**dataclasses.asdict(cfg.student.lora), "sync": "merged"}
                    for _, cfg in configs
                    if cfg.student.lora.r
                ),
                dataclasses.asdict(first.student.lora),
            ),
        },
        "eval": {
            "max_new_tokens_student": min(STUDENT_TOKENS, max(cfg.eval.max_new_tokens_student for _, cfg in configs)),
            "before": False,
        },
        "run": {"name": "smoke", "output_root": str(out)},
        "stages": list(stages.values()),
    }
    file = out / "smoke.yaml"
    file.write_text(yaml.safe_dump(tree, sort_keys=False))
    return load_config(str(file))


@pytest.fixture(scope="session")
def tiny_stand_in(built_once):
    """A tiny Llama that writes answers in the format of every task the tiny configs use, and
    inputs when few-shot prompted with them (synthetic D); not a good teacher of any."""

    def build(out: Path) -> None:
        import torch

        from cdscale.bootstrap import BootstrapSettings, bootstrap
        from cdscale.tasks import build_task

        torch.set_num_threads(1)  # as the tiny teacher's bootstrap (tests/conftest.py): fewer CPU-seconds
        tasks = [
            build_task("addition", {"min_digits": 1, "max_digits": SMALL["tiny"]["addition_max_digits"]}),
            *(
                build_task("arithmetic", {"operation": op, "min_digits": 2, "max_digits": 5})
                for op in ("max", "min", "first", "second")
            ),
        ]
        bootstrap(
            tasks,
            out,
            BootstrapSettings(
                steps=300, batch_size=16, lr=3e-3, learn_inputs=True, until_sampled_accuracy=None, num_layers=4
            ),
        )

    return built_once("tiny-stand-in", build)


# For the suite's order: the SmolLM2 group is its longest test (a 135M model on 2 CPUs).
SECONDS = {"smollm2-frozen-forward_kl_topk": 330, "tiny-frozen-forward_kl_topk": 170}


@pytest.mark.parametrize(
    "group",
    [pytest.param(g, marks=pytest.mark.seconds(SECONDS.get(g, 30))) for g in sorted(GROUPS)],
    ids=str,
)
def test_every_config_runs_at_small_sizes(group, tmp_path, monkeypatch, request):
    from cdscale.distillation import run
    from cdscale.models.smollm2 import prepare_smollm2

    monkeypatch.chdir(ROOT)  # records paths are relative to the repository root
    family = group.split("-")[0]
    model = prepare_smollm2() if family == "smollm2" else request.getfixturevalue("tiny_stand_in")
    cfg = merged_config(GROUPS[group], Path(model), tmp_path, SMALL[family])
    start_local_ray(num_cpus=1 + SMALL[family]["cpus_per_rank"], include_dashboard=False)
    try:
        summary = run(cfg)
    finally:
        ray.shutdown()
    operations = [
        (f"{path.stem}.{op.name}", op)
        for path in GROUPS[group]
        for stage in resolve_stages(load_config(str(path)))
        for op in stage.operations
    ]
    assert set(summary["student_after"]) == {name for name, op in operations if op.num_eval}  # 0: trained only
    for m in summary["student_after"].values():
        assert m["n"] == SMALL[family]["num_eval"]
        # An open-ended operation without gold (a chat task) is scored by its rules instead.
        assert 0.0 <= m["accuracy"] <= 1.0 if m["accuracy"] is not None else m["rules"]
        assert all(0.0 <= rate <= 1.0 for rate in m.get("rules", {}).values())
    # Every operation that trains got training examples (teacher samples, gold answers, or
    # synthetic inputs and then teacher samples), in the round of its stage.
    kept = {
        op: counts["kept"]
        for key, round_ in summary.items()
        if key.startswith("round_")
        for op, counts in round_["by_operation"].items()
    }
    assert {op for op, n in kept.items() if n > 0} == {name for name, op in operations if op.num_train}
    open_ended = {name for name, op in operations if op.task.name == "chat"}
    assert set(summary.get("context_gap", {})) == open_ended
    by_transformers = _context_gaps_by_transformers(cfg, Path(model), tmp_path, sorted(open_ended))
    for name in open_ended:
        gap = summary["context_gap"][name]
        assert gap["before"] > 0 and gap["after"] is not None
        assert gap["before"] == pytest.approx(by_transformers[name], abs=2e-3)
    if cfg.student.lora.r:  # the merged student, and its adapter in peft's format
        assert (tmp_path / "smoke" / "student" / "adapter" / "adapter_config.json").is_file()
        assert summary["round_0"]["sync_s"] > 0
    if cfg.student.until_accuracy:  # each round checked after its epoch, and after an extra one when below
        points = [(op, p) for op, ps in summary["validation"].items() for p in ps]
        assert {op for op, p in points} == {name for name, op in operations if op.num_train and op.num_eval}
        for r in {p["round"] for _, p in points}:
            first = [p["accuracy"] for _, p in points if p["round"] == r and p["epochs"] == 1]
            extra = [p for _, p in points if p["round"] == r and p["epochs"] == 2]
            assert first and bool(extra) == (min(first) < cfg.student.until_accuracy), (r, points)
    # Synthetic inputs came out for each operation of them, and for each one they top up.
    synthetic = {name for name, op in operations if op.inputs == "synthetic" or op.synthetic_top_up}
    events = [json.loads(line) for line in (tmp_path / "smoke" / "metrics.jsonl").read_text().splitlines()]
    assert {e["operation"] for e in events if e["event"] == "synthetic_inputs" and e["kept"] > 0} == synthetic
    for name in {name for name, op in operations if op.synthetic_top_up}:  # on top of its own inputs
        assert summary["round_0"]["by_operation"][name]["generated"] > SMALL[family]["num_train"]


def _context_gaps_by_transformers(cfg: Config, model: Path, out: Path, ops: list[str]) -> dict[str, float]:
    """Each operation's context gap before distillation, computed again with transformers: the
    model's logprob of each token of the run's reference responses (kept in its first commit)
    after the teacher's prompt and after the student's, and the mean difference over the
    tokens. The teacher's side must equal what vLLM reported when it sampled them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cdscale.inputs import build_tasks, sample_splits

    first = sorted((out / "smoke" / "state").glob("0*"))[0]
    references = json.loads((first / "progress.json").read_text())["references"]
    stages = resolve_stages(cfg)
    tasks = build_tasks(stages)
    tokenizer = AutoTokenizer.from_pretrained(model)
    for op in ops:
        tasks[op].use_tokenizer(tokenizer, cfg.teacher.max_model_len)
    held_out = sample_splits(cfg, stages, tasks)[0]
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()

    def logprobs(prompt: str, response: list[int]) -> list[float]:
        ids = tokenizer(prompt)["input_ids"]
        with torch.no_grad():
            logits = hf(torch.tensor([ids + response])).logits[0, len(ids) - 1 : -1]
        return torch.log_softmax(logits, -1).gather(1, torch.tensor(response)[:, None])[:, 0].tolist()

    gaps = {}
    for op in ops:
        differences = []
        for x, ref in zip(held_out[op], references[op]["context_gap"]):
            if ref is None:
                continue
            teacher = logprobs(tasks[op].teacher_prompt(x), ref["token_ids"])
            assert teacher == pytest.approx(ref["logprobs"], abs=2e-3)
            student = logprobs(tasks[op].student_prompt(x), ref["token_ids"])
            differences += [t - s for t, s in zip(ref["logprobs"], student)]
        gaps[op] = sum(differences) / len(differences)
    return gaps
