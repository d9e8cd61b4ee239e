"""Distillation losses on the answer positions only.

The teacher signal at each answer position is its top-k next-token logprobs
(`ids`, `logprobs`: [N, K], padded with logprob = -inf). Tokens outside the top-k are
lumped into one tail bucket, so the teacher's target is a proper distribution over
k + 1 outcomes and no probability mass is silently dropped.
"""
from __future__ import annotations

import torch

LOSSES = ("forward_kl_topk", "hard")


def forward_kl_topk(student_logprobs: torch.Tensor, ids: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) over the teacher's top-k plus a tail bucket, per position.

    student_logprobs: [N, V] log-softmax of the student at the answer positions.
    ids, logprobs: [N, K] the teacher's top-k token ids and logprobs; padding has -inf.
    Returns [N].
    """
    valid = torch.isfinite(logprobs)
    p_log = torch.where(valid, logprobs, torch.zeros_like(logprobs)).float()
    p = torch.where(valid, p_log.exp(), torch.zeros_like(p_log))
    q_log = torch.gather(student_logprobs.float(), 1, ids.clamp(min=0))
    q_log = torch.where(valid, q_log, torch.full_like(q_log, -torch.inf))
    kl_topk = (p * (p_log - torch.where(valid, q_log, torch.zeros_like(q_log)))).sum(-1)

    p_tail = (1.0 - p.sum(-1)).clamp(min=0.0)
    # The student's tail mass as a logsumexp over the tokens outside the top-k: exact, where
    # 1 - sum(q_topk) would cancel to 0 in float32 and stop the gradient into the tail.
    # (scatter_add, not scatter: padding entries may repeat a real top-k id)
    in_topk = torch.zeros(student_logprobs.shape, dtype=torch.int32, device=ids.device).scatter_add_(1, ids.clamp(min=0), valid.int()) > 0
    q_tail_log = student_logprobs.float().masked_fill(in_topk, -torch.inf).logsumexp(-1)
    p_tail_log = torch.log(p_tail.clamp(min=1e-30))
    kl_tail = torch.where(p_tail > 1e-6, p_tail * (p_tail_log - q_tail_log), torch.zeros_like(p_tail))
    return kl_topk + kl_tail


def hard_label_nll(student_logprobs: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the teacher's sampled tokens f(y), per position."""
    return -torch.gather(student_logprobs.float(), 1, target_ids[:, None]).squeeze(1)


def distillation_loss(
    name: str,
    student_logprobs: torch.Tensor,
    target_ids: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
) -> torch.Tensor:
    """Mean loss over the answer positions in the batch."""
    if name == "forward_kl_topk":
        per_position = forward_kl_topk(student_logprobs, topk_ids, topk_logprobs)
    elif name == "hard":
        per_position = hard_label_nll(student_logprobs, target_ids)
    else:
        raise ValueError(f"student.loss: unknown loss {name!r}; allowed: {list(LOSSES)}")
    return per_position.mean()
