"""The distillation loss against references computed directly over the full vocabulary."""
import math

import torch

from cdscale.student.losses import distillation_loss, forward_kl_topk, hard_label_nll


def _random_dists(n=6, vocab=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.log_softmax(torch.randn(n, vocab, generator=g) * 2, -1)
    student = torch.log_softmax(torch.randn(n, vocab, generator=g) * 2, -1)
    return teacher, student


def test_full_support_equals_full_vocab_kl():
    teacher, student = _random_dists()
    ids = torch.arange(teacher.shape[1]).expand_as(teacher)
    expected = (teacher.exp() * (teacher - student)).sum(-1)  # KL(p || q) over the whole vocabulary
    assert torch.allclose(forward_kl_topk(student, ids, teacher), expected, atol=1e-5)


def test_topk_with_tail_equals_kl_of_bucketed_distributions():
    teacher, student = _random_dists(seed=1)
    k = 4
    top = teacher.topk(k, -1)
    got = forward_kl_topk(student, top.indices, top.values)
    for i in range(teacher.shape[0]):
        keep = top.indices[i].tolist()
        rest = [v for v in range(teacher.shape[1]) if v not in keep]
        p = [teacher[i, v].exp().item() for v in keep] + [teacher[i, rest].exp().sum().item()]
        q = [student[i, v].exp().item() for v in keep] + [student[i, rest].exp().sum().item()]
        expected = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        assert abs(got[i].item() - expected) < 1e-5
    # Lumping outcomes into a tail can only lose information (data processing inequality).
    full = (teacher.exp() * (teacher - student)).sum(-1)
    assert torch.all(got <= full + 1e-6)


def test_padding_entries_are_ignored():
    teacher, student = _random_dists(seed=2)
    top = teacher.topk(3, -1)
    ids = torch.cat([top.indices, torch.zeros(teacher.shape[0], 2, dtype=torch.long)], -1)
    lps = torch.cat([top.values, torch.full((teacher.shape[0], 2), -math.inf)], -1)
    assert torch.allclose(forward_kl_topk(student, ids, lps), forward_kl_topk(student, top.indices, top.values), atol=1e-6)


def test_zero_when_student_matches_teacher_and_gradient_flows():
    teacher, _ = _random_dists(seed=3)
    top = teacher.topk(5, -1)
    assert forward_kl_topk(teacher, top.indices, top.values).abs().max() < 1e-5
    logits = torch.zeros_like(teacher, requires_grad=True)
    loss = distillation_loss("forward_kl_topk", torch.log_softmax(logits, -1), top.indices[:, 0], top.indices, top.values)
    loss.backward()
    assert loss.item() > 0 and logits.grad.abs().sum() > 0


def test_hard_label_is_nll_of_the_sampled_token():
    _, student = _random_dists(seed=4)
    targets = torch.tensor([0, 3, 5, 1, 2, 7])
    expected = torch.stack([-student[i, t] for i, t in enumerate(targets)])
    assert torch.allclose(hard_label_nll(student, targets), expected)
