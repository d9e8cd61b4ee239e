"""Step 1 of a round: the raw inputs x ~ D of every operation, and the held-out evaluation inputs.

Every draw comes from a stream seeded by the run's seed, the round and the operation, so a
resumed run draws what the interrupted one drew. (Synthetic inputs, sampled from the engines
when their round starts, are in `teacher/synthetic_inputs.py`.)
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from cdscale.config import ConfigError, OperationConfig, StageConfig, count_field
from cdscale.tasks import Example, Task, build_task, sample_where

if TYPE_CHECKING:
    from cdscale.config import Config


def build_tasks(stages: list[StageConfig]) -> dict[str, Task]:
    """Every operation's task, by operation name (checks each task's options and files now)."""
    return {op.name: build_task(op.task.name, op.task.options) for stage in stages for op in stage.operations}


def sample_splits(
    cfg: Config, stages: list[StageConfig], tasks: dict[str, Task]
) -> tuple[dict[str, list[Example]], list[dict[str, list[Example]]]]:
    """Distinct held-out eval inputs per operation (none for one with num_eval 0), then for
    each round of the run the training inputs of each operation of its stage (never held out).

    Training inputs are drawn from D as it is, repeats included. Drawing them distinct
    instead skews addition's mix towards 3-digit sums (the 1- and 2-digit ones run out), and
    the student then failed to learn at all (4% after, in a run that also had 3 epochs and
    temperature 0.5; 79% with D as it is): the easy sums seen again and again are its curriculum.
    An operation with `inputs: synthetic` draws its inputs when its round starts; one with
    num_train 0 is only evaluated.
    """
    seed = cfg.data.seed
    suffix = (lambda name: "") if len(tasks) == 1 else (lambda name: f"-{name}")  # a one-task run keeps its streams
    num_eval = {op.name: op.num_eval for stage in stages for op in stage.operations}
    eval_sets = {
        name: _held_out(
            task, num_eval[name], f"{seed}-eval{suffix(name)}", f"{count_field(cfg, name, 'num_eval')} ({name})"
        )
        for name, task in tasks.items()
    }
    rounds: list[dict[str, list[Example]]] = []
    for stage in stages:
        for _ in range(stage.rounds):
            inputs = {}
            for op in stage.operations:
                if op.inputs != "synthetic" and op.num_train > 0:
                    rng = random.Random(f"{seed}-train-{len(rounds)}{suffix(op.name)}")
                    what = f"{count_field(cfg, op.name, 'num_train')} ({op.name})"
                    inputs[op.name] = _training_inputs(op, stage, tasks, eval_sets[op.name], rng, what)
            rounds.append(inputs)
    return eval_sets, rounds


def sample_validation(
    cfg: Config, tasks: dict[str, Task], eval_sets: dict[str, list[Example]]
) -> dict[str, list[Example]]:
    """Per scored operation, `data.num_validation` distinct held-out inputs that are not evaluation
    inputs (what `student.until_accuracy` is checked on), with gold answers; drawn from a
    stream of their own, so the other draws stay what they were without them."""
    validation = {}
    for name, task in tasks.items():
        if not eval_sets[name]:  # num_eval 0: the operation is never scored
            validation[name] = []
            continue
        stream, what = f"{cfg.data.seed}-validation-{name}", f"data.num_validation ({name})"
        validation[name] = _held_out(task, cfg.data.num_validation, stream, what, {x.input for x in eval_sets[name]})
        if any(x.gold is None for x in validation[name]):
            raise ConfigError(
                f"student.until_accuracy: operation {name!r} has inputs without a gold answer; its accuracy, "
                "the criterion, cannot be measured"
            )
    return validation


def _held_out(task: Task, n: int, stream: str, what: str, exclude: set[str] | None = None) -> list[Example]:
    """n distinct held-out inputs of `task`, drawn from the seeded `stream`, none in `exclude`."""
    rng = random.Random(stream)
    return sample_where(task, n, rng, held_out=True, distinct=True, what=what, exclude=frozenset(exclude or ()))


def _training_inputs(
    op: OperationConfig,
    stage: StageConfig,
    tasks: dict[str, Task],
    eval_set: list[Example],
    rng: random.Random,
    what: str,
) -> list[Example]:
    """`inputs: own` draws from the operation's D; `demonstrations` from its task's in-context
    examples; `mixed` each input from the D of a uniformly chosen training operation of the stage.
    `what`: the count's field, for errors."""
    if op.inputs == "own":
        return sample_where(tasks[op.name], op.num_train, rng, held_out=False, what=what)
    if op.inputs == "demonstrations":
        shown = tasks[op.name].demonstration_examples()
        leaked = sorted({x.input for x in shown} & {x.input for x in eval_set})
        if leaked:  # training on them would train on this run's evaluation
            raise ConfigError(
                f"{what}: in-context examples (the task's demonstrations) are also evaluation inputs: {leaked[:3]}"
            )
        return [shown[rng.randrange(len(shown))] for _ in range(op.num_train)]
    sources = [tasks[o.name] for o in stage.operations if o.num_train > 0]
    picks = [rng.randrange(len(sources)) for _ in range(op.num_train)]
    mixed = [
        x for j, src in enumerate(sources) for x in sample_where(src, picks.count(j), rng, held_out=False, what=what)
    ]
    rng.shuffle(mixed)
    return mixed
