"""Distillation losses on the answer positions only.

The teacher signal at each answer position is its top-k next-token logprobs
(`ids`, `logprobs`: [N, K], padded with logprob = -inf). Tokens outside the top-k are
lumped into one tail bucket, so teacher and student are compared as distributions over the
same k + 1 outcomes and no probability mass is silently dropped. Every loss below works
on those buckets:

- `forward_kl_topk` (default): KL(teacher || student).
- `sampled_soft`: the paper's own label, the empirical distribution of S tokens sampled
  from the teacher at each position (S = 100 in the paper); its expectation is the
  teacher's distribution, so its expected gradient is forward KL's.
- `jsd`: generalized Jensen-Shannon divergence with weight beta on the teacher,
  beta KL(p || m) + (1 - beta) KL(q || m) with m = beta p + (1 - beta) q.
- `hard`: negative log-likelihood of the teacher's own tokens f(y).
- `reverse_kl_sampled` (on-policy data only): the sampled-token estimate of KL(student ||
  teacher) on the student's own samples y, token by token: the teacher's and the student's
  logprob of the token the student drew give the advantage A = log p_T(y_t) - log p_S(y_t)
  (no gradient through it), and the loss is -A times the importance ratio
  rho = p_S(y_t) / p_behaviour(y_t) of the weights now to those that sampled, PPO-clipped to
  [1 - clip, 1 + clip] (GKD; on-policy distillation). Its expected gradient under y ~ student
  is that of KL(student || teacher) at each position.

A temperature T (soft losses only) softens both sides (the teacher by renormalizing p^(1/T) over the buckets,
the student exactly through its logits) and scales the loss by T^2. With a non-empty tail
the teacher's tail bucket is softened as one outcome: exact only for full support.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

LOSSES = ("forward_kl_topk", "sampled_soft", "jsd", "hard", "reverse_kl_sampled")
ON_POLICY_LOSSES = ("reverse_kl_sampled",)  # need the student's own samples and their logprobs
REDUCTIONS = ("mean", "sum")  # over the answer positions
TAIL_EPS = 1e-6  # teacher tail mass below this is float noise from sum(top-k) ~= 1


def bucket_logprobs(
    student_logprobs: torch.Tensor, ids: torch.Tensor, logprobs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student log-probabilities over the top-k ids plus the tail, [N, K + 1]
    each; -inf where an outcome is absent (padding; a teacher tail of no mass)."""
    # Only -inf is padding: a NaN or +inf from a broken teacher must reach the loss and stop the run.
    valid = ~torch.isneginf(logprobs)
    p_log_topk = torch.where(valid, logprobs.float(), torch.full_like(logprobs, -math.inf, dtype=torch.float32))
    p_tail = (1.0 - p_log_topk.exp().sum(-1)).clamp(min=0.0)
    p_tail_log = torch.where(p_tail > TAIL_EPS, p_tail.clamp(min=1e-30).log(), torch.full_like(p_tail, -math.inf))

    q_log_topk = torch.gather(student_logprobs.float(), 1, ids.clamp(min=0))
    q_log_topk = torch.where(valid, q_log_topk, torch.full_like(q_log_topk, -math.inf))
    # The student's tail as a logsumexp over the tokens outside the top-k: exact, where
    # 1 - sum(q_topk) would cancel to 0 in float32 and stop the gradient into the tail.
    # (scatter_add, not scatter: padding entries may repeat a real top-k id)
    in_topk = (
        torch.zeros(student_logprobs.shape, dtype=torch.int32, device=ids.device).scatter_add_(
            1, ids.clamp(min=0), valid.int()
        )
        > 0
    )
    q_tail_log = student_logprobs.float().masked_fill(in_topk, -math.inf).logsumexp(-1)
    return torch.cat([p_log_topk, p_tail_log[:, None]], -1), torch.cat([q_log_topk, q_tail_log[:, None]], -1)


def kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row over the last axis; outcomes with p = 0 contribute nothing (a NaN
    in p is not such an outcome: it makes the row NaN)."""
    present = ~torch.isneginf(p_log)
    p_safe = torch.where(present, p_log, torch.zeros_like(p_log))
    q_safe = torch.where(present, q_log, torch.zeros_like(q_log))
    return torch.where(present, p_safe.exp() * (p_safe - q_safe), torch.zeros_like(p_safe)).sum(-1)


def jsd(p_log: torch.Tensor, q_log: torch.Tensor, beta: float) -> torch.Tensor:
    """Generalized JSD per row: beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q."""
    m_log = torch.logaddexp(p_log + math.log(beta), q_log + math.log(1.0 - beta))
    return beta * kl(p_log, m_log) + (1.0 - beta) * kl(q_log, m_log)


def temper(p_log: torch.Tensor, temperature: float) -> torch.Tensor:
    """p^(1/T), renormalized over the outcomes present."""
    return torch.log_softmax(p_log / temperature, -1) if temperature != 1.0 else p_log


def empirical(p_log: torch.Tensor, samples: int, generator: torch.Generator | None) -> torch.Tensor:
    """Log of the empirical distribution of `samples` draws from each row of exp(p_log);
    all NaN for a row that is not a distribution (NaN or inf), so the loss shows it."""
    probs = p_log.exp()
    broken = ~torch.isfinite(probs).all(-1, keepdim=True)
    probs = torch.where(broken, torch.ones_like(probs), probs)  # anything multinomial accepts
    draws = torch.multinomial(probs, samples, replacement=True, generator=generator)
    counts = torch.zeros_like(p_log).scatter_add_(1, draws, torch.ones_like(draws, dtype=p_log.dtype))
    return torch.where(broken, torch.full_like(counts, math.nan), (counts / samples).log())


def forward_kl_topk(student_logprobs: torch.Tensor, ids: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) over the teacher's top-k plus a tail bucket, per position."""
    return kl(*bucket_logprobs(student_logprobs, ids, logprobs))


def hard_label_nll(student_logprobs: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the teacher's sampled tokens f(y), per position."""
    return -torch.gather(student_logprobs.float(), 1, target_ids[:, None]).squeeze(1)


def reverse_kl_sampled(
    student_logprobs: torch.Tensor,
    target_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    behaviour_logprobs: torch.Tensor,
    clip: float,
) -> torch.Tensor:
    """The sampled-token reverse-KL loss per position (see the module docstring): the
    student's sampled tokens `target_ids`, the teacher's logprob of each, and the logprob the
    sampling weights gave it."""
    student = torch.gather(student_logprobs.float(), 1, target_ids[:, None]).squeeze(1)
    advantage = (teacher_logprobs.float() - student).detach()
    ratio = (student - behaviour_logprobs.float()).exp()
    return -torch.minimum(ratio * advantage, ratio.clamp(1.0 - clip, 1.0 + clip) * advantage)


def sampled_token_logprob(target_ids: torch.Tensor, ids: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """The teacher's logprob of each position's target token, read from its top-k rows
    (which always hold the sampled token); NaN where a row lacks it, so the loss shows it."""
    hit = ids == target_ids[:, None]
    found = torch.where(hit, logprobs.float(), torch.full_like(logprobs, -math.inf, dtype=torch.float32)).amax(-1)
    return torch.where(hit.any(-1), found, torch.full_like(found, math.nan))


@dataclass(frozen=True)
class LossSpec:
    """Which loss, with its options (`student.loss`, `student.temperature`, ...)."""

    name: str = "forward_kl_topk"  # one of LOSSES
    temperature: float = 1.0  # softens both sides of the soft losses (the loss is scaled by T^2)
    jsd_beta: float = 0.5  # jsd: the teacher's weight in the mixture
    soft_label_samples: int = 100  # sampled_soft: teacher draws per position
    ratio_clip: float = 0.2  # reverse_kl_sampled: the importance ratio's clip


def distillation_loss(
    loss: LossSpec | str,
    student_logits: torch.Tensor,
    target_ids: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    generator: torch.Generator | None = None,
    reduction: Literal["mean", "sum"] = "mean",
) -> torch.Tensor:
    """The loss over the answer positions in the batch; `student_logits`: [N, V] at those
    positions. `reverse_kl_sampled` needs the samples' own logprobs: `sampled_reverse_kl_loss`.

    `reduction`: "mean" over the positions, or "sum" of the per-position losses, for a caller
    that divides by a count of its own (the trainer divides by the global batch's answer
    tokens, so that ranks with different counts weigh every token alike).
    """
    spec = LossSpec(loss) if isinstance(loss, str) else loss
    name, temperature = spec.name, spec.temperature
    if name not in LOSSES:
        raise ValueError(f"student.loss: unknown loss {name!r}; allowed: {list(LOSSES)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: unknown {reduction!r}; allowed: {list(REDUCTIONS)}")
    reduce = torch.sum if reduction == "sum" else torch.mean
    if name == "hard":  # a label, not a distribution: no temperature
        return reduce(hard_label_nll(torch.log_softmax(student_logits.float(), -1), target_ids))
    if name == "reverse_kl_sampled":
        raise ValueError("student.loss: reverse_kl_sampled needs the student's own samples (data source: student)")
    student_logprobs = torch.log_softmax(student_logits.float() / temperature, -1)
    p_log, q_log = bucket_logprobs(student_logprobs, topk_ids, topk_logprobs)
    p_log = temper(p_log, temperature)
    if name == "forward_kl_topk":
        per_position = kl(p_log, q_log)
    elif name == "sampled_soft":
        per_position = kl(empirical(p_log, spec.soft_label_samples, generator), q_log)
    else:
        per_position = jsd(p_log, q_log, spec.jsd_beta)
    return reduce(per_position) * temperature**2


def sampled_reverse_kl_loss(
    spec: LossSpec,
    student_logits: torch.Tensor,
    target_ids: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    sample_logprobs: torch.Tensor,
    reduction: Literal["mean", "sum"] = "mean",
) -> torch.Tensor:
    """`reverse_kl_sampled` over the answer positions (arguments as in `distillation_loss`);
    `sample_logprobs`: the logprob of each target token under the weights that sampled it."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: unknown {reduction!r}; allowed: {list(REDUCTIONS)}")
    teacher = sampled_token_logprob(target_ids, topk_ids, topk_logprobs)
    student_logprobs = torch.log_softmax(student_logits.float(), -1)
    per_token = reverse_kl_sampled(student_logprobs, target_ids, teacher, sample_logprobs, spec.ratio_clip)
    return per_token.sum() if reduction == "sum" else per_token.mean()
