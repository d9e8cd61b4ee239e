"""Step 4 of a round: epochs of shuffled global batches on the trainer ranks.

The round's records go to every rank once; each call then runs `steps_per_call` steps, every
rank taking its share of each global batch. The plan of batches is a function of the seed,
so a round resumed after `progress.step` steps continues with the next batch, and no batch
is used twice.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import ray

from cdscale.checkpoint import Progress
from cdscale.student.schedule import warmup_cosine
from cdscale.student.trainer import combine_rank_stats

if TYPE_CHECKING:
    from cdscale.config import Config, StudentConfig
    from cdscale.metrics import MetricsLog
    from cdscale.student.group import TrainerGroup


@dataclass
class TrainStats:
    steps: int
    loss_first: float  # mean of the first (at most) 10 step losses of the round
    loss_last: float  # mean of the last 10
    train_tokens_per_s: float
    train_seconds: float
    train_tokens: int = 0

    @classmethod
    def added(cls, runs: list[TrainStats], steps: int) -> TrainStats:
        """Several `train_round` calls of one round as one: their seconds and tokens summed,
        the losses the last call's (each call's are the round's so far)."""
        seconds, tokens = sum(run.train_seconds for run in runs), sum(run.train_tokens for run in runs)
        last = runs[-1] if runs else cls(steps, math.nan, math.nan, 0.0, 0.0)
        return cls(steps, last.loss_first, last.loss_last, tokens / seconds if seconds else 0.0, seconds, tokens)


@dataclass
class RoundPart:
    """The steps of a round that one `train_round` call trains. `total`, the round's planned
    steps, is the learning-rate schedule's length; steps after it are the extra epochs of
    `student.until_accuracy` (see `_rate`)."""

    steps: range
    total: int
    extra_epochs: int = 0  # epochs the round's batch plan holds after `student.epochs`
    refresh: int | None = None  # a refresh's index: its own records, shuffled by a stream of their own


def batch_plan(num_records: int, batch_size: int, epochs: int, rng: random.Random) -> list[tuple[int, list[int]]]:
    """(epoch, global batch of record indices) for every step of a round; a partial batch is dropped."""
    steps_per_epoch, plan = num_records // batch_size, []
    for epoch in range(epochs):
        order = list(range(num_records))
        rng.shuffle(order)
        plan += [(epoch, order[b * batch_size : (b + 1) * batch_size]) for b in range(steps_per_epoch)]
    return plan


def train_round(
    cfg: Config,
    trainers: TrainerGroup,
    records: list[dict[str, Any]],
    progress: Progress,
    log: MetricsLog,
    stop: Callable[[], bool],
    part: RoundPart | None = None,
) -> TrainStats | None:
    """Train `progress.round` from step `progress.step` on, appending each step's loss to
    `progress.losses`. Returns None when `stop()` turned true between calls (the caller
    commits the state), else the statistics of the steps trained (the losses: the round's).

    `part`: train only that range of the round's steps (default: `student.epochs` epochs); a
    refresh's as many passes over its `records` as the range takes."""
    from tqdm import tqdm

    s, r = cfg.student, progress.round
    plan, steps, total, desc = _round_plan(cfg, len(records), r, part)
    trainers.call("set_records", ray.put(records))
    tokens, start = 0, time.perf_counter()
    first_step = max(progress.step, steps.start)
    with tqdm(total=len(steps), initial=first_step - steps.start, desc=desc, unit="step", leave=False) as bar:
        for first in range(first_step, steps.stop, s.steps_per_call):
            if stop():
                return None
            chunk = range(first, min(first + s.steps_per_call, steps.stop))
            lrs = [_rate(s, step, total, len(records) // s.batch_size) for step in chunk]
            batches = [plan[step - steps.start][1] for step in chunk]
            per_rank = _train_steps(cfg, trainers, batches, lrs, f"round {r}, steps {first}-{chunk.stop - 1}")
            for k, step in enumerate(chunk):
                stats = combine_rank_stats([rank_stats[k] for rank_stats in per_rank])
                tokens += stats["tokens"]
                progress.losses.append(stats["loss"])
                log.write(
                    event="train",
                    round=r,
                    epoch=plan[step - steps.start][0],
                    step=step,
                    loss=stats["loss"],
                    lr=lrs[k],
                    token_accuracy=stats["token_accuracy"],
                )
            progress.step = chunk.stop
            bar.set_postfix(loss=f"{progress.losses[-1]:.4f}")
            bar.update(len(chunk))
    seconds = time.perf_counter() - start
    done = progress.losses or [math.nan]
    head, tail = done[:10], done[-10:]
    return TrainStats(
        total,
        sum(head) / len(head),
        sum(tail) / len(tail),
        tokens / seconds if seconds > 0 else 0.0,
        seconds,
        tokens,
    )


def _rate(s: StudentConfig, step: int, total: int, per_epoch: int) -> float:
    """The learning rate of a round's step: warm-up and cosine decay over the round's `total`
    planned steps; after them, each extra epoch of `student.until_accuracy` is a warm restart
    (the cosine again, from the peak down to the same last rate, in one epoch), so that each
    check reads a student annealed again rather than one barely moved at the last rate."""
    if step < total:
        return s.lr * warmup_cosine(step, total, s.warmup_steps)
    return s.lr * warmup_cosine((step - total) % per_epoch, per_epoch, 0)


def _round_plan(
    cfg: Config, num_records: int, r: int, part: RoundPart | None
) -> tuple[list[tuple[int, list[int]]], range, int, str]:
    """`train_round`'s batch plan (indexed from its first step), its steps, the round's total
    steps and the progress bar's label."""
    s = cfg.student
    if part is None or part.refresh is None:
        # Extra epochs extend the plan: its first `epochs` stay what they are without them.
        extra = part.extra_epochs if part else 0
        rng = random.Random(f"{cfg.data.seed}-shuffle-{r}")
        plan = batch_plan(num_records, s.batch_size, s.epochs + extra, rng)
        steps, total = (part.steps, part.total) if part else (range(len(plan)), len(plan))
        return plan, steps, total, f"round {r} train"
    passes = math.ceil(len(part.steps) / (num_records // s.batch_size))  # a pass drops its partial batch
    rng = random.Random(f"{cfg.data.seed}-shuffle-{r}-refresh-{part.refresh}")
    plan = batch_plan(num_records, s.batch_size, passes, rng)[: len(part.steps)]
    return plan, part.steps, part.total, f"round {r} refresh {part.refresh} train"


def _train_steps(
    cfg: Config, trainers: TrainerGroup, batches: list[list[int]], lrs: list[float], where: str
) -> list[Any]:
    """Each rank's stats of each step (every rank gets the global batches and takes its share)."""
    try:
        return trainers.call("train_steps", batches, lrs)
    except FloatingPointError as err:  # a rank's loss was NaN or inf; every rank stopped before its update
        raise FloatingPointError(
            f"{where}: {str(err).splitlines()[-1]}; nothing was saved after it, so the "
            f"last commit under {cfg.run_dir / 'state'} is the last good state (lower student.lr?)"
        ) from None
