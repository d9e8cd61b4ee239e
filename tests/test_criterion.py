"""Training to a criterion (`student.until_accuracy`): after `student.epochs`, one more epoch
at a time while the validation accuracy is below the criterion, at most
`student.max_extra_epochs`. The units here; the loop on the real stack in test_stack.py."""

import math

import pytest

from cdscale.config import ConfigError, load_config, resolve_stages
from cdscale.inputs import build_tasks, sample_splits, sample_validation
from cdscale.student.loop import RoundPart, TrainStats, _rate, _round_plan
from cdscale.student.schedule import warmup_cosine


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["student.until_accuracy=0.9"], "needs data.num_validation and student.max_extra_epochs of at least 1"),
        (
            ["student.until_accuracy=0.9", "data.num_validation=50", "student.max_extra_epochs=0"],
            "needs data.num_validation and student.max_extra_epochs",
        ),
        (["student.until_accuracy=1.5"], "student.until_accuracy: must be in [0, 1]"),
        (["data.num_validation=-1"], "data.num_validation and student.max_extra_epochs: must not be negative"),
        (
            ["student.until_accuracy=0.9", "data.num_validation=50", "data.refresh_every_steps=8"],
            "student.until_accuracy: a round split into refreshes",
        ),
    ],
)
def test_a_criterion_that_cannot_be_checked_is_refused_with_its_fields_named(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)


def test_validation_inputs_are_held_out_distinct_and_none_is_an_evaluation_input():
    cfg = load_config(None, ["data.num_eval=300", "data.num_validation=300", "data.num_train=4096"])
    stages = resolve_stages(cfg)
    tasks = build_tasks(stages)
    eval_sets, rounds = sample_splits(cfg, stages, tasks)
    validation = sample_validation(cfg, tasks, eval_sets)["addition"]
    inputs = [x.input for x in validation]
    assert len(set(inputs)) == 300 and all(x.gold for x in validation)
    assert not set(inputs) & {x.input for x in eval_sets["addition"]}
    assert not set(inputs) & {x.input for x in rounds[0]["addition"]}
    # Drawn from a stream of their own: the evaluation and training inputs are what they were.
    without = sample_splits(load_config(None, ["data.num_eval=300", "data.num_train=4096"]), stages, tasks)
    assert without == (eval_sets, rounds)


def test_extra_epochs_extend_the_batch_plan_and_leave_its_first_epochs_as_they_were():
    cfg = load_config(None, ["student.epochs=2", "student.batch_size=4"])
    plain, steps, total, _ = _round_plan(cfg, 10, 0, None)
    assert steps == range(4) and total == 4  # 2 epochs of 2 full batches; each epoch drops 2 records
    extended, steps, total, _ = _round_plan(cfg, 10, 0, RoundPart(range(6), 4, extra_epochs=1))
    assert extended[:4] == plain and [epoch for epoch, _ in extended[4:]] == [2, 2]
    assert steps == range(6) and total == 4  # the schedule's length stays the planned epochs'
    assert [batch for _, batch in extended[4:]] != [batch for _, batch in plain[:2]]  # a shuffle of its own
    refresh, steps, total, _ = _round_plan(cfg, 10, 0, RoundPart(range(4, 7), 12, refresh=1))
    assert len(refresh) == 3 and steps == range(4, 7) and total == 12


def test_train_stats_of_several_calls_add_their_time_and_tokens():
    a = TrainStats(10, 2.0, 1.0, 100.0, 2.0, 200)
    b = TrainStats(20, 2.0, 0.5, 50.0, 6.0, 300)
    both = TrainStats.added([a, b], 20)
    assert (both.steps, both.loss_first, both.loss_last, both.train_seconds, both.train_tokens) == (
        20,
        2.0,
        0.5,
        8,
        500,
    )
    assert both.train_tokens_per_s == pytest.approx(500 / 8)
    none = TrainStats.added([], 7)  # every call's steps were trained before a resume
    assert none.steps == 7 and math.isnan(none.loss_last) and none.train_tokens_per_s == 0.0


def test_shuffles_of_the_extra_epochs_do_not_depend_on_how_many_are_allowed():
    cfg = load_config(None, ["student.epochs=1", "student.batch_size=4"])
    one, *_ = _round_plan(cfg, 12, 0, RoundPart(range(6), 3, extra_epochs=1))
    three, *_ = _round_plan(cfg, 12, 0, RoundPart(range(6), 3, extra_epochs=3))
    assert three[: len(one)] == one


def test_each_extra_epoch_restarts_the_cosine_from_the_peak_down_to_the_last_rate():
    s = load_config(None, ["student.lr=1e-3", "student.warmup_steps=5"]).student
    per_epoch, total = 10, 30
    assert [_rate(s, step, total, per_epoch) for step in range(total)] == [
        1e-3 * warmup_cosine(step, total, 5) for step in range(total)
    ]
    for start in (total, total + per_epoch):  # two extra epochs, each the same warm restart
        rates = [_rate(s, start + k, total, per_epoch) for k in range(per_epoch)]
        assert rates[0] == pytest.approx(1e-3)  # no warm-up: the peak at once
        assert all(a > b for a, b in zip(rates, rates[1:])) and rates[-1] > 1e-4  # down towards the last rate
        assert rates[-1] == pytest.approx(1e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi * 0.9))))
