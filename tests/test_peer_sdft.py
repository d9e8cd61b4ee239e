"""The TRL SDFT peer benchmark's settings translation (benchmarks/peers/trl_sdft.py).

Runs without trl: the translation is a pure function, and the module imports neither trl nor
torch until its main() runs.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from cdscale.config import Config

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "peers" / "trl_sdft.py"


def _load():
    spec = importlib.util.spec_from_file_location("peer_trl_sdft", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


peer = _load()


def test_importing_the_script_pulls_in_neither_trl_nor_torch():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('m', {str(SCRIPT)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "m.sdft_config_kwargs(steps=1, output_dir='x')\n"
        "print(sorted({'trl', 'torch', 'transformers', 'datasets'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cdscale_defaults_map_to_forward_kl_topk_with_tail_in_float32():
    cfg = Config()
    kw = peer.from_cdscale_config(cfg, steps=100, output_dir="/tmp/x")
    assert kw["distillation_mode"] == "topk_logits"
    assert kw["distillation_alpha"] == 0.0  # forward KL(teacher || student)
    assert kw["distillation_add_tail"] is True
    assert kw["distillation_topk"] == cfg.teacher.top_k
    # TRL's own defaults are bf16 autocast (even on CPU) and gradient checkpointing on.
    assert kw["bf16"] is False and kw["fp16"] is False
    assert kw["gradient_checkpointing"] is False
    assert kw["model_init_kwargs"] == {"dtype": "float32"}
    assert kw["teacher_model_kind"] == "base"  # cdscale's frozen teacher


def test_optimizer_and_schedule_follow_the_student_section():
    cfg = Config()
    s = cfg.student
    kw = peer.from_cdscale_config(cfg, steps=100, output_dir="/tmp/x")
    assert kw["learning_rate"] == s.lr
    assert kw["weight_decay"] == s.weight_decay
    assert kw["warmup_steps"] == s.warmup_steps
    assert kw["max_grad_norm"] == s.grad_clip
    assert kw["per_device_train_batch_size"] == s.batch_size
    assert kw["gradient_accumulation_steps"] == 1
    assert kw["num_generations"] == 1
    assert kw["max_steps"] == 100
    assert kw["lr_scheduler_type"] == "cosine_with_min_lr"
    assert kw["lr_scheduler_kwargs"] == {"min_lr_rate": 0.1}
    assert kw["max_completion_length"] == cfg.eval.max_new_tokens_student
    assert kw["temperature"] == cfg.teacher.temperature
    assert kw["top_k"] == 0 and kw["top_p"] == 1.0  # full-distribution sampling


@pytest.mark.parametrize("source, from_teacher", [("student", False), ("teacher", True)])
def test_generate_from_teacher_follows_the_data_source(source, from_teacher):
    cfg = Config()
    cfg.data.source = source
    assert peer.from_cdscale_config(cfg, steps=1, output_dir="x")["generate_from_teacher"] is from_teacher
    assert peer.sdft_config_kwargs(steps=1, output_dir="x", source=source)["generate_from_teacher"] is from_teacher


def test_on_policy_is_the_function_default():
    assert peer.sdft_config_kwargs(steps=1, output_dir="x")["generate_from_teacher"] is False


def test_reverse_kl_sampled_maps_to_sdft_sampled_token_reverse_kl():
    kw = peer.sdft_config_kwargs(steps=1, output_dir="x", loss="reverse_kl_sampled", source="student")
    assert kw["distillation_mode"] == "sampled_token"
    assert kw["distillation_alpha"] == 1.0  # TRL rejects sampled_token with any other alpha


def test_bfloat16_turns_autocast_on():
    kw = peer.sdft_config_kwargs(steps=1, output_dir="x", dtype="bfloat16")
    assert kw["bf16"] is True and kw["model_init_kwargs"] == {"dtype": "bfloat16"}


@pytest.mark.parametrize(
    "change",
    [
        {"loss": "sampled_soft"},
        {"loss": "hard"},
        {"loss": "jsd"},
        {"source": "mixed"},
        {"loss": "reverse_kl_sampled", "source": "teacher"},
        {"teacher_mode": "recursive"},
        {"sampling_temperature": 1.0, "loss_temperature": 2.0},
        {"dtype": "float16"},
        {"top_k": 0},
        {"steps": 0},
    ],
)
def test_settings_without_an_sdft_counterpart_are_refused(change):
    with pytest.raises(ValueError):
        peer.sdft_config_kwargs(steps=change.pop("steps", 1), output_dir="x", **change)


def test_lora_student_is_refused():
    cfg = Config()
    cfg.student.lora.r = 8
    with pytest.raises(ValueError, match="LoRA"):
        peer.from_cdscale_config(cfg, steps=1, output_dir="x")


def test_teacher_template_has_both_placeholders_and_reproduces_the_teacher_text():
    template = peer.sdft_config_kwargs(steps=1, output_dir="x")["teacher_prompt_template"]
    assert "{prompt}" in template and "{privileged_context}" in template  # TRL requires both
    text = template.format(prompt="Input:\n1 + 2\nAnswer:\n", privileged_context="<scratch>\n...\n</scratch>")
    assert text == "Input:\n1 + 2\nAnswer:\n<scratch>\n...\n</scratch>\n"


def test_cli_defaults_are_cdscales_defaults():
    cfg = Config()
    a = peer.build_parser().parse_args([])
    assert a.mode == "on_policy"
    assert a.loss == cfg.student.loss
    assert a.lr == cfg.student.lr
    assert a.warmup_steps == cfg.student.warmup_steps
    assert a.batch_size == cfg.student.batch_size
    assert a.top_k == cfg.teacher.top_k
    assert a.temperature == cfg.teacher.temperature == cfg.student.temperature
    assert a.dtype == cfg.model.dtype
    assert a.grad_ckpt is cfg.student.gradient_checkpointing
    assert a.max_completion_length == cfg.eval.max_new_tokens_student
    assert a.eval == cfg.data.num_eval
    assert cfg.task.name == "addition"
    assert (a.min_digits, a.max_digits) == (cfg.task.options["min_digits"], cfg.task.options["max_digits"])
    assert a.threads == 1


def test_side_by_side_times_each_tool_to_an_accuracy(tmp_path):
    """benchmarks/peers/side_by_side.py: a TRL curve gives the first evaluation at or above the
    mark; cdscale runs give the shortest run (without its evaluations) that ended above it."""
    import json

    spec = importlib.util.spec_from_file_location("side_by_side", SCRIPT.parent / "side_by_side.py")
    side = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(side)
    trl = tmp_path / "trl.json"
    trl.write_text(
        json.dumps(
            {
                "args": {"mode": "on_policy", "steps": 4},
                "versions": {"trl": "1.16.0"},
                "completions_trained": 512,
                "train_seconds": 40.0,
                "student_accuracy_after": 0.3,
                "accuracy_curve": [
                    {"step": 2, "train_seconds": 20.0, "student_accuracy": 0.1},
                    {"step": 3, "train_seconds": 30.0, "student_accuracy": 0.35},
                ],
            }
        )
    )
    runs = []
    for name, total, accuracy in (("long", 100.0, 0.6), ("short", 60.0, 0.2)):
        run = tmp_path / name
        run.mkdir()
        (run / "config.yaml").write_text(
            "data: {source: student, refresh_every_steps: 2}\nstudent: {batch_size: 128}\n"
        )
        summary = {
            "round_0": {"steps": 4},
            "timings": {"total": total, "eval": 10.0},
            "student_after": {"addition": {"accuracy": accuracy}},
            "curve": {"addition": [{"round": 0, "step": 2, "seconds": 70.0, "accuracy": accuracy / 2}]},
        }
        (run / "summary.json").write_text(json.dumps(summary))
        runs.append(side.cdscale_row(run))
    rows = [side.trl_row(trl), *runs]
    assert runs[0]["mode"] == "on_policy, refresh 2" and runs[0]["examples"] == 512
    assert side.first_reach(rows[:1], 0.3) == (30.0, str(trl))  # the curve, not the end
    assert side.first_reach(runs, 0.15) == (50.0, str(tmp_path / "short"))  # 60 s less 10 s of evaluation
    assert side.first_reach(runs, 0.5) == (90.0, str(tmp_path / "long"))
    assert side.first_reach(runs, 0.3) == (70.0, str(tmp_path / "long"))  # its curve, mid-run
    assert side.first_reach(runs, 0.7) is None
    assert side.across_seeds(rows) == {
        ("TRL SDFT 1.16.0", "on_policy", 4): [0.3],
        ("cdscale", "on_policy, refresh 2", 4): [0.6, 0.2],
    }
