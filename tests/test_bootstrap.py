"""`cdscale bootstrap` trains to a criterion: it finishes its schedule, restarts it (at most
max_restarts times) while the teacher is below the criterion at the schedule's end, and with
stop_at_criterion stops at the first check that passes."""

import json
import logging
from pathlib import Path

import pytest
import torch

from cdscale.bootstrap import BootstrapSettings, bootstrap
from cdscale.config import load_config, resolve_stages
from cdscale.tasks import build_task

ROOT = Path(__file__).resolve().parent.parent


def _settings(until: float, stop_at_criterion: bool = False) -> BootstrapSettings:
    return BootstrapSettings(
        steps=6,
        batch_size=4,
        eval_every=3,
        until_sampled_accuracy=until,
        max_restarts=2,
        check_problems=4,
        stop_at_criterion=stop_at_criterion,
    )


def test_a_teacher_that_meets_the_criterion_mid_schedule_finishes_the_schedule(tmp_path):
    torch.set_num_threads(2)
    info = bootstrap(build_task("addition", {"max_digits": 2}), tmp_path / "teacher", _settings(until=0.0))
    # Met at the check of step 3 and at the schedule's end: no restart, no stop before it.
    assert [h["step"] for h in info["history"]] == [3, 6]
    assert info["steps"] == 6
    assert info["schedules"] == [6, 3, 3]


def test_with_stop_at_criterion_training_stops_at_the_first_check_that_passes(tmp_path):
    torch.set_num_threads(2)
    settings = _settings(until=0.0, stop_at_criterion=True)
    info = bootstrap(build_task("addition", {"max_digits": 2}), tmp_path / "teacher", settings)
    assert [h["step"] for h in info["history"]] == [3]
    assert info["steps"] == 3
    saved = json.loads((tmp_path / "teacher" / "cdscale_bootstrap.json").read_text())
    assert saved["steps"] == 3 and saved["until_sampled_accuracy"] == 0.0 and saved["stop_at_criterion"]
    assert (tmp_path / "teacher" / "model.safetensors").is_file()


def test_a_teacher_below_the_criterion_gets_restarts_then_is_saved_with_a_warning(tmp_path, caplog):
    torch.set_num_threads(2)
    with caplog.at_level(logging.INFO, logger="cdscale.bootstrap"):
        # A model 18 steps old answers none of the problems: the criterion 1.0 is never met.
        info = bootstrap(build_task("addition", {"max_digits": 2}), tmp_path / "teacher", _settings(until=1.0))
    # One schedule of 6 steps, then two restarts of 3; each ends with a check.
    assert info["schedules"] == [6, 3, 3]
    assert [h["step"] for h in info["history"]] == [3, 6, 9, 12]
    assert info["steps"] == 12
    assert sum("the schedule restarts" in r.message for r in caplog.records) == 2
    assert any(r.levelno == logging.WARNING and "below the criterion" in r.message for r in caplog.records)
    assert (tmp_path / "teacher" / "config.json").is_file()


def test_the_library_defaults_are_the_commands_defaults():
    """`bootstrap(task, out)` from Python trains the teacher that `cdscale bootstrap` trains."""
    from cdscale.cli import _parser

    args = _parser().parse_args(["bootstrap"])
    s = BootstrapSettings()
    assert (s.steps, s.batch_size, s.lr, s.seed, s.eval_every, s.max_restarts) == (
        args.steps,
        args.batch_size,
        args.lr,
        args.seed,
        args.eval_every,
        args.max_restarts,
    )
    assert s.spaced_pieces != args.character_tokenizer
    assert s.stop_at_criterion == args.stop_at_criterion
    # None: `_bootstrap` takes the library's depth for the demo's teacher, 4 for every other
    assert args.layers is None and s.num_layers == 2
    # None: `_bootstrap` takes the library's criterion for addition, 0 for arithmetic
    assert args.until_sampled_accuracy is None and s.until_sampled_accuracy == 0.95


@pytest.mark.parametrize(
    ("argv", "layers", "folder"),
    [
        ([], 2, "tiny-addition"),  # the demo's teacher
        (["--layers", "4"], 4, "tiny-addition-4layers"),  # the demo's teacher before 2026-12-07
        (["--max-digits", "8", "--same-length"], 4, "tiny-addition-1to8-same"),  # configs/table3.yaml's
        (["--max-digits", "8", "--layers", "2"], 2, "tiny-addition-1to8-2layers"),
        (["--learn-inputs"], 4, "tiny-addition-inputs"),  # configs/synthetic.yaml's
        (["--task", "arithmetic"], 4, "tiny-arithmetic"),
    ],
)
def test_the_depth_defaults_to_2_for_the_demos_teacher_alone_and_another_gets_its_own_folder(argv, layers, folder):
    """Every teacher whose results are documented keeps its depth and its folder; a depth other
    than its default never overwrites it."""
    from cdscale.cli import _bootstrap_folder, _parser

    args = _parser().parse_args(["bootstrap", *argv])
    assert _bootstrap_folder(args) == folder
    assert args.layers == layers


def test_a_cached_teacher_of_another_depth_is_refused_by_name_not_run_as_the_new_one(tmp_path, monkeypatch, capsys):
    """A cache from before 2026-12-07 holds the four-layer demo teacher as `tiny-addition`:
    `cdscale bootstrap` must not take it for the two-layer one `make demo` now runs."""
    from cdscale.cli import main
    from cdscale.models import prepared_path

    monkeypatch.setenv("CDSCALE_CACHE", str(tmp_path))
    prepared_path("tiny-addition").mkdir(parents=True)
    (prepared_path("tiny-addition") / "config.json").write_text(json.dumps({"num_hidden_layers": 4}))
    assert main(["bootstrap"]) == 2
    err = capsys.readouterr().err
    assert f"{prepared_path('tiny-addition')} has 4 layers, not the 2" in err and "--force" in err
    # The four-layer teacher in its own folder is what `--layers 4` finds.
    prepared_path("tiny-addition-4layers").mkdir(parents=True)
    (prepared_path("tiny-addition-4layers") / "config.json").write_text(json.dumps({"num_hidden_layers": 4}))
    assert main(["bootstrap", "--layers", "4"]) == 0
    assert f"{prepared_path('tiny-addition-4layers')} already bootstrapped" in capsys.readouterr().out


def test_the_arithmetic_teacher_trains_exactly_its_steps_by_default(tmp_path, monkeypatch):
    """The four arithmetic tasks' tiny teacher stays near 42% (docs/results.md): the addition
    criterion would only add restarts, so the command's default there is exactly --steps."""
    from cdscale.cli import main

    monkeypatch.setenv("CDSCALE_CACHE", str(tmp_path))
    torch.set_num_threads(2)
    assert main(["bootstrap", "--task", "arithmetic", "--steps", "4", "--batch-size", "2"]) == 0
    saved = json.loads((tmp_path / "models" / "tiny-arithmetic" / "cdscale_bootstrap.json").read_text())
    assert saved["steps"] == 4 and saved["schedules"] == [4] and not saved["until_sampled_accuracy"]


def test_a_teacher_of_a_fixed_problem_set_learns_only_those_and_saves_them_as_records(tmp_path):
    """`--problems N`: N distinct training-side problems, saved with the model as a records file
    that a baseline can be fine-tuned on; every batch comes from them."""
    import random

    from cdscale.bootstrap import TRAIN_PROBLEMS, demonstration_batch, training_problems
    from cdscale.tasks import is_held_out
    from cdscale.tasks.records import load_records

    torch.set_num_threads(2)
    task = build_task("addition", {"max_digits": 3})
    settings = BootstrapSettings(
        steps=2, batch_size=4, eval_every=2, until_sampled_accuracy=None, check_problems=4, problems=12
    )
    info = bootstrap(task, tmp_path / "teacher", settings)
    assert info["problems"] == 12
    records = [x for _, x in load_records(tmp_path / "teacher" / TRAIN_PROBLEMS)]
    assert len({x.input for x in records}) == 12
    pool = training_problems([task], 12, random.Random("problems-0"))
    assert [(x.input, x.gold) for _, x in pool] == [(x.input, x.gold) for x in records]
    assert not any(is_held_out(x, task.held_out_per_mille) for _, x in pool)
    # Every sequence of a batch is one of the pool's problems, with its scratchpad.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "teacher")
    batch = demonstration_batch([task], tokenizer, 4, random.Random(1), pool=pool)
    texts = {task.teacher_prompt(x) + task.teacher_demonstration(x) for _, x in pool}
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
        assert tokenizer.decode(ids[mask.bool()], skip_special_tokens=True).replace(" ", "") in {
            t.replace(" ", "") for t in texts
        }
    with pytest.raises(ValueError, match="at least batch_size=4 problems, got 3"):
        settings.problems = 3
        bootstrap(task, tmp_path / "small", settings)


def test_the_table3_baselines_labels_are_the_problems_its_teacher_learned():
    """configs/table3_sc_then_dir_labels.yaml and table3_sc_plus_dir_labels.yaml fine-tune on
    configs/data/table3_labels.jsonl: the problems `cdscale bootstrap --max-digits 8
    --same-length --problems 4096` (seed 0) teaches."""
    import random

    from cdscale.bootstrap import training_problems
    from cdscale.tasks.records import load_records

    task = build_task("addition", {"min_digits": 1, "max_digits": 8, "same_length": True})
    pool = training_problems([task], 4096, random.Random("problems-0"))
    committed = load_records(ROOT / "configs" / "data" / "table3_labels.jsonl")
    assert [(x.input, x.gold) for _, x in committed] == [(x.input, x.gold) for _, x in pool]
    for name in ("table3_sc_then_dir_labels", "table3_sc_plus_dir_labels"):
        stage = resolve_stages(load_config(str(ROOT / "configs" / f"{name}.yaml")))[0]
        files = {
            op.task.options.get("path") or op.task.options.get("problems") for op in stage.operations if op.num_train
        }
        assert files == {"configs/data/table3_labels.jsonl"}, name


def test_the_checks_do_not_change_the_weights(tmp_path):
    """A check samples with torch's random state, which training does not use: the teacher's
    weights are the same whatever --eval-every is, so a changed check interval keeps earlier
    teachers reproducible."""
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    weights = []
    for every in (2, 6):
        settings = BootstrapSettings(
            steps=6, batch_size=4, eval_every=every, until_sampled_accuracy=None, check_problems=4
        )
        bootstrap(build_task("addition", {"max_digits": 2}), tmp_path / f"every{every}", settings)
        weights.append(load_file(tmp_path / f"every{every}" / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
