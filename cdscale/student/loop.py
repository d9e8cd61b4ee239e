"""Step 4 of a round: epochs of shuffled global batches on the trainer ranks.

The round's records go to every rank once; each call then runs `steps_per_call` steps, every
rank taking its share of each global batch. The plan of batches is a function of the seed,
so a round resumed after `progress.step` steps continues with the next batch, and no batch
is used twice.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import ray

from cdscale.checkpoint import Progress
from cdscale.student.schedule import warmup_cosine
from cdscale.student.trainer import combine_rank_stats

if TYPE_CHECKING:
    from cdscale.config import Config
    from cdscale.metrics import MetricsLog
    from cdscale.student.group import TrainerGroup


@dataclass
class TrainStats:
    steps: int
    loss_first: float  # mean of the first (at most) 10 step losses of the round
    loss_last: float  # mean of the last 10
    train_tokens_per_s: float
    train_seconds: float


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
) -> TrainStats | None:
    """Train `progress.round` from step `progress.step` on, appending each step's loss to
    `progress.losses`. Returns None when `stop()` turned true between calls (the caller
    commits the state), else the round's statistics."""
    from tqdm import tqdm

    s, r = cfg.student, progress.round
    plan = batch_plan(len(records), s.batch_size, s.epochs, random.Random(f"{cfg.data.seed}-shuffle-{r}"))
    trainers.call("set_records", ray.put(records))
    total, tokens, start = len(plan), 0, time.perf_counter()
    with tqdm(total=total, initial=progress.step, desc=f"round {r} train", unit="step", leave=False) as bar:
        for first in range(progress.step, total, s.steps_per_call):
            if stop():
                return None
            chunk = range(first, min(first + s.steps_per_call, total))
            lrs = [s.lr * warmup_cosine(step, total, s.warmup_steps) for step in chunk]
            per_rank = _train_steps(
                cfg, trainers, [plan[step][1] for step in chunk], lrs, f"round {r}, steps {first}-{chunk.stop - 1}"
            )
            for k, step in enumerate(chunk):
                stats = combine_rank_stats([rank_stats[k] for rank_stats in per_rank])
                tokens += stats["tokens"]
                progress.losses.append(stats["loss"])
                log.write(
                    event="train",
                    round=r,
                    epoch=plan[step][0],
                    step=step,
                    loss=stats["loss"],
                    lr=lrs[k],
                    token_accuracy=stats["token_accuracy"],
                )
            progress.step = chunk.stop
            bar.set_postfix(loss=f"{progress.losses[-1]:.4f}")
            bar.update(len(chunk))
    seconds = time.perf_counter() - start
    head, tail = progress.losses[: min(10, total)], progress.losses[-min(10, total) :]
    return TrainStats(
        total, sum(head) / len(head), sum(tail) / len(tail), tokens / seconds if seconds > 0 else 0.0, seconds
    )


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
