"""The config schema: defaults, YAML + dotted overrides, and errors that name the field."""

import dataclasses
from pathlib import Path

import pytest

from cdscale.cli import main
from cdscale.config import Config, ConfigError, RunFailed, describe, load_config, native_bf16_cpu
from cdscale.models import PREPARED

CONFIGS = Path(__file__).parent.parent / "configs"


def test_the_demo_config_is_the_embedded_default_trained_to_a_criterion_at_temperature_2_in_auto_dtype():
    demo = load_config(CONFIGS / "addition.yaml", ["model.dtype=float32"])
    assert demo.student.until_accuracy == 0.9 and demo.data.num_validation == 500
    assert demo.student.temperature == 2.0
    without = dataclasses.replace(
        demo,
        student=dataclasses.replace(demo.student, until_accuracy=0.0, temperature=1.0),
        data=dataclasses.replace(demo.data, num_validation=0),
    )
    assert without == Config()
    assert "dtype: auto" in (CONFIGS / "addition.yaml").read_text()


def test_auto_dtype_is_bfloat16_where_computed_natively_and_float32_elsewhere(monkeypatch):
    import cdscale.config

    zen4 = "flags\t\t: fpu vme avx512f avx512_bf16 avx512_vnni\n"
    assert native_bf16_cpu(zen4) and native_bf16_cpu("flags : fpu amx_bf16 amx_tile\n")
    assert not native_bf16_cpu("flags\t\t: fpu vme avx2 avx512f avx512_vnni\n")
    for native, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(cdscale.config, "native_bf16_cpu", lambda native=native: native)
        assert load_config(None, ["model.dtype=auto"]).model.dtype == expected
        on_gpus = ["model.dtype=auto", "teacher.gpus_per_engine=1", "student.gpus_per_rank=1"]
        assert load_config(None, on_gpus).model.dtype == "bfloat16"
    assert load_config(None, ["model.dtype=float32"]).model.dtype == "float32"


def test_overrides_are_typed_and_nested():
    cfg = load_config(
        None, ["student.zero_stage=3", "student.lr=5e-4", "task.options.max_digits=5", "run.ray_address=auto"]
    )
    assert cfg.student.zero_stage == 3 and cfg.student.lr == 5e-4
    assert cfg.task.options["max_digits"] == 5 and cfg.run.ray_address == "auto"
    # YAML 1.1 would read these names as booleans; true/false still set a boolean field.
    assert load_config(None, ["run.name=off"]).run.name == "off"
    assert load_config(None, ["run.name=Yes", "teacher.enforce_eager=True"]).teacher.enforce_eager is True
    with pytest.raises(ConfigError, match="teacher.enforce_eager: expected true or false, got 'on'"):
        load_config(None, ["teacher.enforce_eager=on"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("student.zero_stage=4", "student.zero_stage: 4 is not allowed; allowed values: [1, 2, 3]"),
        ("student.loss=mse", "student.loss: 'mse' is not allowed"),
        ("student.optimiser=adam", "student.optimiser: unknown field"),
        ("studnet.lr=1", "studnet: unknown field"),
        ("student.lr=fast", "student.lr: expected a number"),
        ("student.batch_size=3", "student.batch_size: 3 does not split evenly"),
        ("data.num_train=0", "data.num_train: must be at least 1"),
        ("student.pack_tokens=-8", "student.pack_tokens: must not be negative"),
        ("teacher.mode=live", "teacher.mode: 'live' is not allowed; allowed values: ['frozen', 'recursive']"),
        ("student.epochs", "expected section.field=value"),
    ],
)
def test_bad_values_name_the_field_and_the_allowed_values(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_bad_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("student: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_describe_explains_every_field():
    text = describe(Config())
    assert "zero_stage: 2  # DeepSpeed ZeRO stage (one of [1, 2, 3])" in text
    assert all("  # " in line for line in text.splitlines() if line.startswith("  "))


def test_cli_reports_config_and_model_errors_with_exit_status_2(capsys, tmp_path):
    assert main(["run", "student.zero_stage=9"]) == 2
    assert "student.zero_stage" in capsys.readouterr().err
    # Runs go under tmp_path: a run in the checkout's runs/ must not answer first.
    out = f"run.output_root={tmp_path / 'runs'}"
    assert main(["run", f"model.path={tmp_path / 'nowhere'}", out]) == 2
    assert "model.path" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["run", f"model.path={tmp_path / 'empty'}", out]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_cli_refuses_to_overwrite_a_run_and_to_resume_a_non_run(capsys, tmp_path):
    (tmp_path / "old" / "state").mkdir(parents=True)
    assert main(["run", f"run.output_root={tmp_path}", "run.name=old"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "old"), "run.rounds=3"]) == 2
    assert "drop ['run.rounds=3']" in capsys.readouterr().err


def test_a_config_that_is_not_a_mapping_and_a_resume_with_an_empty_config_are_refused(capsys, tmp_path):
    for text in ("- model\n- data\n", "just words\n"):
        (tmp_path / "c.yaml").write_text(text)
        with pytest.raises(ConfigError, match=r"c\.yaml: a config is a mapping of sections"):
            load_config(str(tmp_path / "c.yaml"))
    (tmp_path / "old" / "state").mkdir(parents=True)
    (tmp_path / "old" / "config.yaml").write_text("\n")  # defaults in its place would mix two configs
    assert main(["run", "--resume", str(tmp_path / "old")]) == 2
    assert "config.yaml is empty" in capsys.readouterr().err


def test_an_unexpected_failure_is_one_line_on_stderr_and_its_traceback_goes_to_a_file(capsys, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text('["JSON, but not a summary"]')  # report has no check for this
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    assert main(["report", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cdscale: error: AttributeError: ") and "Traceback" not in err
    log_file = Path(err.split("the full traceback is in ")[1].strip())
    assert "Traceback (most recent call last)" in log_file.read_text() and "AttributeError" in log_file.read_text()
    log_file.unlink()


def test_a_ray_task_error_is_reported_as_the_actors_own_exception():
    import ray

    from cdscale.cli import _own_message

    wrapped = ray.exceptions.RayTaskError(
        "train_step", "Traceback ...\n  long Ray text", ValueError("rank 1: bad batch")
    )
    assert _own_message(wrapped) == "ValueError: rank 1: bad batch"
    assert _own_message(RuntimeError("first line\nsecond")) == "RuntimeError: first line"


@pytest.mark.parametrize(
    "override, field",
    [
        ("teacher.max_model_len=0", "teacher.max_model_len"),
        ("teacher.max_num_seqs=0", "teacher.max_num_seqs"),
        ("eval.max_new_tokens_student=0", "eval.max_new_tokens_student"),
        ("teacher.max_new_tokens=512", "teacher.max_new_tokens"),  # the default context: no room for a prompt
    ],
)
def test_engine_limits_that_cannot_run_are_refused(override, field):
    with pytest.raises(ConfigError, match=field):
        load_config(None, [override])


def test_resume_may_change_where_the_run_goes_on_but_not_what_it_computes(capsys, monkeypatch, tmp_path):
    """A run saved on one allocation goes on in another: launchers/slurm.sbatch passes
    run.ray_address=auto to the resumed run as it did to the first."""
    import yaml

    import cdscale.distillation

    seen = {}
    monkeypatch.setattr(cdscale.distillation, "run", lambda cfg, resume=False: seen.update(cfg=cfg, resume=resume))
    (tmp_path / "moved" / "old").mkdir(parents=True)
    (tmp_path / "moved" / "old" / "config.yaml").write_text(
        yaml.safe_dump(load_config(None, ["run.name=old"]).to_dict())
    )
    assert main(["run", "--resume", str(tmp_path / "moved" / "old"), "run.ray_address=auto", "run.timeout_s=60"]) == 0
    cfg = seen["cfg"]
    assert seen["resume"] and cfg.run.ray_address == "auto" and cfg.run.timeout_s == 60
    assert cfg.run_dir == tmp_path / "moved" / "old"
    assert main(["run", "--resume", str(tmp_path / "moved" / "old"), "run.ray_address=auto", "student.lr=1"]) == 2
    assert "['student.lr=1']" in capsys.readouterr().err


@pytest.mark.parametrize("error", [FloatingPointError, RunFailed])
def test_cli_exits_1_with_the_drivers_message_when_a_run_cannot_go_on(capsys, monkeypatch, error):
    """The exit status only: the messages come from the real ranks and driver elsewhere (a
    NaN loss on one rank in tests/test_stack.py; too many skipped inputs in
    tests/test_bad_input.py)."""
    import cdscale.distillation

    def fail(cfg, resume=False):
        raise error("round 0, steps 0-2: the cause")

    monkeypatch.setattr(cdscale.distillation, "run", fail)
    assert main(["run"]) == 1
    assert "cdscale: error: round 0, steps 0-2: the cause" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path, monkeypatch):
    from cdscale.config import resolve_stages
    from cdscale.inputs import build_tasks, sample_splits

    monkeypatch.chdir(CONFIGS.parent)  # records paths are relative to the repository root
    cfg = load_config(str(path))
    stages = resolve_stages(cfg)
    eval_sets, rounds = sample_splits(cfg, stages, build_tasks(stages))  # the tasks and their input spaces fit too
    assert len(rounds) == sum(stage.rounds for stage in stages)
    num_eval = {op.name: op.num_eval for stage in stages for op in stage.operations}
    assert {name: len(examples) for name, examples in eval_sets.items()} == num_eval


@pytest.mark.parametrize(
    "operations,field",
    [
        # One-digit addition has 100 questions: 500 held-out ones cannot be found.
        ("[{name: a, num_eval: 500}]", r"stages\[0\]\.operations\[0\]\.num_eval \(a\)"),
        ("[{name: a, num_eval: 4}, {name: b}]", r"data\.num_eval \(b\)"),
        ("[{name: a, num_eval: 500}, {name: b}]", r"stages\[0\]\.operations\[0\]\.num_eval \(a\)"),
    ],
)
def test_a_count_the_input_space_cannot_meet_names_the_field_it_came_from(operations, field):
    """An operation's own num_eval is named as its own, even when it equals data.num_eval; one it
    took from `data` is named there."""
    from cdscale.config import resolve_stages
    from cdscale.inputs import build_tasks, sample_splits

    cfg = load_config(
        None,
        [
            "task.options={min_digits: 1, max_digits: 1}",
            "data.num_eval=500",
            "data.num_train=128",
            f"stages=[{{operations: {operations}}}]",
        ],
    )
    stages = resolve_stages(cfg)
    with pytest.raises(ConfigError, match=field + ": found only"):
        sample_splits(cfg, stages, build_tasks(stages))


def test_stages_are_checked_with_the_field_named():
    from cdscale.config import resolve_stages

    base = "stages=[{operations: [{name: a}, {name: a}]}]"
    with pytest.raises(ConfigError, match=r"stages\[0\].operations\[1\].name: 'a' is used twice"):
        load_config(None, [base])
    with pytest.raises(ConfigError, match=r"stages\[0\].operations: a stage needs at least one operation"):
        load_config(None, ["stages=[{operations: []}]"])
    with pytest.raises(ConfigError, match=r"stages\[0\].operations\[0\].inputs: 'all' is not allowed"):
        load_config(None, ["stages=[{operations: [{inputs: all}]}]"])
    with pytest.raises(ConfigError, match=r"stages\[1\].operations\[0\].num_train: 8 is below student.batch_size"):
        load_config(None, ["stages=[{operations: [{name: a}]}, {operations: [{name: b, num_train: 8}]}]"])
    with pytest.raises(ConfigError, match=r"stages\[0\].operations\[0\].num_eval: 0 with num_train 0; an operation is"):
        load_config(None, ["stages=[{operations: [{name: a, num_train: 0, num_eval: 0}]}]"])
    with pytest.raises(ConfigError, match=r"stages\[0\].operations\[0\].num_eval: -1 with num_train"):
        load_config(None, ["stages=[{operations: [{name: a, num_eval: -1}]}]"])
    with pytest.raises(ConfigError, match=r"student.until_accuracy: stage 'stage0' \(stages\[0\]\) trains only"):
        unscored = "stages=[{operations: [{name: a, num_eval: 0}]}]"
        load_config(None, [unscored, "student.until_accuracy=0.5", "data.num_validation=8"])
    with pytest.raises(ConfigError, match="run.rounds: with stages given"):
        load_config(None, ["stages=[{operations: [{name: a}]}]", "run.rounds=2"])
    with pytest.raises(ConfigError, match=r"stages\[0\].operations: every operation has num_train 0"):
        load_config(None, ["stages=[{operations: [{name: a, num_train: 0}]}]"])
    evaluated_only = load_config(None, ["stages=[{operations: [{name: a}, {name: b, num_train: 0}]}]"])
    assert [op.num_train for op in resolve_stages(evaluated_only)[0].operations] == [65536, 0]
    with pytest.raises(ConfigError, match="stages: expected a list"):
        load_config(None, ["stages={name: a}"])
    # A synthetic top-up adds to an operation's own inputs: data's default, an operation's own value
    topped = load_config(
        None, ["data.synthetic_top_up=64", "stages=[{operations: [{name: a}, {name: b, synthetic_top_up: 0}]}]"]
    )
    assert [op.synthetic_top_up for op in resolve_stages(topped)[0].operations] == [64, 0]
    others = "stages=[{operations: [{name: a}, {name: b, num_train: 0}, {name: c, inputs: synthetic}]}]"
    inherits = load_config(None, ["data.synthetic_top_up=64", others])  # only where it applies
    assert [op.synthetic_top_up for op in resolve_stages(inherits)[0].operations] == [64, 0, 0]
    assert resolve_stages(load_config(None, ["data.synthetic_top_up=32"]))[0].operations[0].synthetic_top_up == 32
    for bad, field in (
        (["data.synthetic_top_up=-1"], r"data.synthetic_top_up: .* got -1"),
        (
            ["stages=[{operations: [{inputs: synthetic, synthetic_top_up: 8}]}]"],
            r"operations\[0\].synthetic_top_up: .* inputs: synthetic",
        ),
        (
            ["data.synthetic_top_up=8", "data.refresh_every_steps=4"],
            r"data.inputs: synthetic inputs are drawn once per round",
        ),
    ):
        with pytest.raises(ConfigError, match=field):
            load_config(None, bad)


TINY_ADDITION_MODELS = [name for name in PREPARED if name.startswith("tiny-addition")]


@pytest.mark.parametrize("folder", TINY_ADDITION_MODELS)
def test_bootstrap_commands_name_their_own_prepared_folder(folder, capsys, monkeypatch, tmp_path):
    """Each prepared tiny model's command (the one the "not prepared yet" error names) uses its
    own folder: an 8-digit bootstrap must not overwrite the 1-3 digit teacher. With every folder
    already there, the command trains nothing and says which folder it found."""
    from cdscale.models import prepared_path

    monkeypatch.setenv("CDSCALE_CACHE", str(tmp_path))
    for name in TINY_ADDITION_MODELS:
        prepared_path(name).mkdir(parents=True)
        (prepared_path(name) / "config.json").write_text("{}")
    assert main(PREPARED[folder].split()[1:]) == 0
    assert f"{prepared_path(folder)} already bootstrapped" in capsys.readouterr().out


def test_a_frozen_teacher_keeps_the_models_weights_when_a_student_goes_on_the_engines_before_it_samples():
    """An off-policy run of one round that evaluates inside it (eval.every_refreshes) puts the
    student on the engines between two refreshes of the teacher: the teacher's weights must be
    kept (a one-round configs/table3.yaml failed at its third refresh without them)."""
    from cdscale.distillation import engines_return_to_model

    refreshes = ["data.refresh_every_steps=8"]
    assert engines_return_to_model(load_config(None, [*refreshes, "eval.every_refreshes=2"]), 1, False)
    assert engines_return_to_model(load_config(None, refreshes), 1, True)  # on-policy
    assert engines_return_to_model(load_config(None, []), 2, False)  # a second round
    assert not engines_return_to_model(load_config(None, refreshes), 1, False)
    recursive = load_config(None, [*refreshes, "eval.every_refreshes=2", "teacher.mode=recursive"])
    assert not engines_return_to_model(recursive, 2, True)  # the teacher is the student


def test_the_weight_transport_follows_the_devices_unless_chosen():
    from cdscale.config import weight_transport

    gpus = ["teacher.gpus_per_engine=1", "student.gpus_per_rank=1"]
    assert weight_transport(load_config(None, [])) == ("object_store", None)
    assert weight_transport(load_config(None, gpus)) == ("broadcast", "nccl")
    assert weight_transport(load_config(None, ["sync.transport=broadcast"])) == ("broadcast", "gloo")
    assert weight_transport(load_config(None, [*gpus, "sync.transport=object_store"])) == ("object_store", None)
    # auto takes the object store when one side has no GPU, or a GPU is shared (NCCL refuses two
    # members on one GPU); asking for a broadcast there is refused
    shared = ["teacher.gpus_per_engine=0.5", "student.gpus_per_rank=0.5"]
    assert weight_transport(load_config(None, gpus[1:])) == ("object_store", None)
    assert weight_transport(load_config(None, shared)) == ("object_store", None)
    for devices in (gpus[1:], shared):
        with pytest.raises(
            ConfigError, match="sync.transport: broadcast needs trainers and engines both on CPUs or each on whole GPUs"
        ):
            load_config(None, [*devices, "sync.transport=broadcast"])
    with pytest.raises(
        ConfigError,
        match=r"sync.transport: 'nccl' is not allowed; allowed values: \['auto', 'object_store', 'broadcast'\]",
    ):
        load_config(None, ["sync.transport=nccl"])


def test_a_tensor_parallel_engine_takes_one_gpu_per_worker():
    assert (
        load_config(None, ["teacher.tensor_parallel_size=2"]).teacher.tensor_parallel_size == 2
    )  # CPU: worker processes
    assert (
        load_config(None, ["teacher.tensor_parallel_size=4", "teacher.gpus_per_engine=4"]).teacher.gpus_per_engine == 4
    )
    with pytest.raises(
        ConfigError, match="teacher.gpus_per_engine: 1.0 GPUs for teacher.tensor_parallel_size=2 workers"
    ):
        load_config(None, ["teacher.tensor_parallel_size=2", "teacher.gpus_per_engine=1"])
    with pytest.raises(ConfigError, match="teacher.tensor_parallel_size: must be at least 1, got 0"):
        load_config(None, ["teacher.tensor_parallel_size=0"])


def test_a_config_saved_before_sync_bucket_mb_existed_still_loads(tmp_path):
    saved = tmp_path / "config.yaml"  # as a run directory of 2026-11-27 holds it
    saved.write_text("student:\n  zero_stage: 3\n  export_bucket_mb: 64\n")
    cfg = load_config(saved)
    assert cfg.sync.bucket_mb == 64 and cfg.student.zero_stage == 3


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["student.loss=reverse_kl_sampled"], "student.loss: reverse_kl_sampled is an estimate on the student's own"),
        (["data.source=mixed", "student.loss=reverse_kl_sampled"], "trains on other responses"),
        (["data.source=student", "data.student_fraction=1.5"], "student_fraction: must be in [0, 1]"),
        (["data.teacher_reasoning=gold"], "data.teacher_reasoning: gold is what the teacher reads"),
        (["data.source=student", "data.teacher_reasoning=own"], "data.teacher_reasoning"),
        (["data.refresh_every_steps=-1"], "data.refresh_every_steps: must not be negative"),
        (["eval.every_refreshes=2"], "eval.every_refreshes: must be 0, or positive with data.refresh_every_steps"),
        (["data.refresh_every_steps=8", "eval.every_refreshes=-1"], "eval.every_refreshes: must be 0"),
        (["student.ratio_clip=0"], "student.ratio_clip: must be in (0, 1)"),
        (["data.source=elsewhere"], "data.source: 'elsewhere' is not allowed"),
    ],
)
def test_on_policy_settings_are_checked(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)


def test_on_policy_settings_resolve_per_operation():
    from cdscale.config import resolve_stages

    cfg = load_config(None, ["data.source=mixed", "data.student_fraction=0.25", "student.loss=forward_kl_topk"])
    (op,) = resolve_stages(cfg)[0].operations
    assert (op.source, op.student_fraction) == ("mixed", 0.25)
    load_config(None, ["data.source=student", "student.loss=reverse_kl_sampled"])  # allowed together


def test_synthetic_inputs_cannot_be_split_into_refreshes():
    config = Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml"
    with pytest.raises(ConfigError, match="synthetic inputs are drawn once per round"):
        load_config(config, ["data.refresh_every_steps=4"])
