"""The distillation losses against references computed directly over the full vocabulary
or over explicitly bucketed distributions."""

import math

import pytest
import torch

from cdscale.student.losses import (
    LossSpec,
    bucket_logprobs,
    distillation_loss,
    empirical,
    forward_kl_topk,
    hard_label_nll,
    jsd,
    sampled_reverse_kl_loss,
)


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
    assert torch.allclose(
        forward_kl_topk(student, ids, lps), forward_kl_topk(student, top.indices, top.values), atol=1e-6
    )


def test_zero_when_student_matches_teacher_and_gradient_flows():
    teacher, _ = _random_dists(seed=3)
    top = teacher.topk(5, -1)
    assert forward_kl_topk(teacher, top.indices, top.values).abs().max() < 1e-5
    logits = torch.zeros_like(teacher, requires_grad=True)
    loss = distillation_loss(
        "forward_kl_topk", torch.log_softmax(logits, -1), top.indices[:, 0], top.indices, top.values
    )
    loss.backward()
    assert loss.item() > 0 and logits.grad.abs().sum() > 0


def test_hard_label_is_nll_of_the_sampled_token():
    _, student = _random_dists(seed=4)
    targets = torch.tensor([0, 3, 5, 1, 2, 7])
    expected = torch.stack([-student[i, t] for i, t in enumerate(targets)])
    assert torch.allclose(hard_label_nll(student, targets), expected)


# --- the loss family: references over the full vocabulary or the explicit buckets ---


def _bucketed_reference(teacher, student, k):
    """Teacher and student probabilities over (top-k of the teacher, the rest), by hand."""
    top = teacher.topk(k, -1)
    ps, qs = [], []
    for i in range(teacher.shape[0]):
        keep = top.indices[i].tolist()
        rest = [v for v in range(teacher.shape[1]) if v not in keep]
        ps.append([teacher[i, v].exp().item() for v in keep] + [teacher[i, rest].exp().sum().item()])
        qs.append([student[i, v].exp().item() for v in keep] + [student[i, rest].exp().sum().item()])
    return top, torch.tensor(ps, dtype=torch.float64), torch.tensor(qs, dtype=torch.float64)


def _jsd_reference(p, q, beta):
    m = beta * p + (1 - beta) * q
    kl_pm = (p * (p / m).log()).where(p > 0, torch.zeros_like(p)).sum(-1)
    kl_qm = (q * (q / m).log()).where(q > 0, torch.zeros_like(q)).sum(-1)
    return beta * kl_pm + (1 - beta) * kl_qm


def test_temperature_with_full_support_equals_the_softened_full_vocab_kl_times_t_squared():
    teacher, student_logits = _random_dists(seed=5)
    t = 2.5
    ids = torch.arange(teacher.shape[1]).expand_as(teacher)
    got = distillation_loss(LossSpec(temperature=t), student_logits, ids[:, 0], ids, teacher)
    p, q = torch.log_softmax(teacher / t, -1), torch.log_softmax(student_logits / t, -1)
    expected = (p.exp() * (p - q)).sum(-1).mean() * t**2
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_on_top_k_with_tail_equals_the_jsd_of_the_bucketed_distributions(beta):
    teacher, student = _random_dists(seed=6)
    top, p, q = _bucketed_reference(teacher, student, 4)
    got = distillation_loss(LossSpec("jsd", jsd_beta=beta), student, top.indices[:, 0], top.indices, top.values)
    assert abs(got.item() - _jsd_reference(p, q, beta).mean().item()) < 1e-5


def test_jsd_is_zero_for_equal_distributions_and_symmetric_at_one_half():
    teacher, student = _random_dists(seed=7)
    assert jsd(teacher, teacher, 0.3).abs().max() < 1e-6
    assert torch.allclose(jsd(teacher, student, 0.5), jsd(student, teacher, 0.5), atol=1e-6)
    full = _jsd_reference(teacher.double().exp(), student.double().exp(), 0.3)
    assert torch.allclose(jsd(teacher, student, 0.3).double(), full, atol=1e-5)


def test_empirical_soft_label_has_the_teacher_distribution_as_its_expectation():
    teacher, student = _random_dists(seed=8)
    top = teacher.topk(3, -1)
    p_log, _ = bucket_logprobs(student, top.indices, top.values)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([empirical(p_log, 100, g).exp() for _ in range(400)])
    assert torch.allclose(draws.mean(0), p_log.exp(), atol=0.01)  # 40,000 draws per row: std below 0.0025
    assert torch.allclose(draws.sum(-1), torch.ones(draws.shape[:2]))  # each label is a distribution
    assert set(torch.unique(draws * 100).round().tolist()) <= set(range(101))  # counts out of S = 100


def test_sampled_soft_expected_gradient_is_the_forward_kl_gradient():
    teacher, student = _random_dists(seed=9)
    top = teacher.topk(4, -1)

    def grad(name, generator=None):
        logits = student.clone().requires_grad_(True)
        distillation_loss(
            LossSpec(name, soft_label_samples=50), logits, top.indices[:, 0], top.indices, top.values, generator
        ).backward()
        return logits.grad

    g = torch.Generator().manual_seed(1)
    mean_sampled = torch.stack([grad("sampled_soft", g) for _ in range(600)]).mean(0)
    assert torch.allclose(mean_sampled, grad("forward_kl_topk"), atol=0.01)


def test_unknown_loss_names_the_field():
    teacher, student = _random_dists()
    with pytest.raises(ValueError, match="student.loss"):
        distillation_loss(
            "reverse", student, teacher.argmax(-1), teacher.topk(2, -1).indices, teacher.topk(2, -1).values
        )


@pytest.mark.parametrize("name", ["forward_kl_topk", "sampled_soft", "jsd"])
def test_a_nan_in_the_teacher_signal_makes_the_loss_nan_not_padding(name):
    """Only -inf marks padding; a broken teacher logprob must reach the trainer's finite check."""
    torch.manual_seed(0)
    logits, ids = torch.randn(3, 10), torch.stack([torch.randperm(10)[:4] for _ in range(3)])
    logprobs = torch.log_softmax(torch.randn(3, 4), -1)
    logprobs[1, 2] = math.nan
    assert torch.isnan(distillation_loss(name, logits, ids[:, 0], ids, logprobs))
    logprobs[1, 2] = -math.inf
    assert torch.isfinite(distillation_loss(name, logits, ids[:, 0], ids, logprobs))


@pytest.mark.parametrize("name", ["forward_kl_topk", "sampled_soft", "jsd", "hard"])
def test_sum_reduction_is_the_mean_times_the_positions(name):
    """The trainer sums per-token losses and divides by the global batch's answer tokens."""
    teacher, student = _random_dists(seed=10)
    top = teacher.topk(4, -1)

    def loss(reduction):
        g = torch.Generator().manual_seed(0)  # the same soft labels for both reductions
        return distillation_loss(
            LossSpec(name, temperature=2.0), student, top.indices[:, 0], top.indices, top.values, g, reduction=reduction
        )

    assert torch.allclose(loss("sum"), loss("mean") * teacher.shape[0], rtol=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        loss("none")


def test_reverse_kl_sampled_expected_gradient_is_the_reverse_kl_gradient():
    """Over every token y the student could draw, weighted by its probability, the
    estimator's gradient (on fresh samples: ratio 1) is autograd's gradient of
    KL(student || teacher) over the full vocabulary, position by position."""
    teacher, _ = _random_dists(n=3, vocab=7, seed=3)
    logits = torch.randn(3, 7, generator=torch.Generator().manual_seed(4), requires_grad=True)
    vocab = teacher.shape[1]
    ids = torch.arange(vocab).expand(3, vocab)  # full support: the teacher's row holds every token

    student = torch.log_softmax(logits, -1)
    exact = (student.exp() * (student - teacher)).sum()
    (expected,) = torch.autograd.grad(exact, logits)

    estimate = torch.zeros_like(logits)
    for y in range(vocab):
        targets = torch.full((3,), y)
        behaviour = torch.log_softmax(logits, -1).detach()[:, y]
        loss = sampled_reverse_kl_loss(LossSpec("reverse_kl_sampled"), logits, targets, ids, teacher, behaviour, "sum")
        (grad,) = torch.autograd.grad(loss, logits)
        estimate += student.detach().exp()[:, y : y + 1] * grad
    assert torch.allclose(estimate, expected, atol=1e-5)


def test_reverse_kl_sampled_clips_the_ratio_of_stale_samples():
    """A token the student now favours far more than when it was sampled (ratio above
    1 + clip) and whose advantage is positive gets no further push: zero gradient; below the
    clip the loss is the ratio times minus the advantage."""
    teacher = torch.log_softmax(torch.tensor([[3.0, 0.0, 0.0]]), -1)
    ids, target = torch.arange(3)[None], torch.tensor([0])
    logits = torch.tensor([[1.0, 0.0, 0.0]], requires_grad=True)
    now = torch.log_softmax(logits, -1)[0, 0].detach()
    for behaviour, clipped in ((now - 1.0, True), (now - 0.1, False)):
        loss = sampled_reverse_kl_loss(
            LossSpec("reverse_kl_sampled", ratio_clip=0.2), logits, target, ids, teacher, behaviour[None]
        )
        (grad,) = torch.autograd.grad(loss, logits)
        advantage = teacher[0, 0] - now
        assert advantage > 0
        if clipped:
            assert torch.all(grad == 0)
        else:
            assert torch.allclose(loss, -(now - behaviour).exp() * advantage)
            assert grad.abs().sum() > 0


def test_reverse_kl_sampled_needs_the_samples_logprobs_and_their_teacher_logprob():
    teacher, student = _random_dists(seed=5)
    top = teacher.topk(3, -1)
    with pytest.raises(ValueError, match="data source: student"):
        distillation_loss("reverse_kl_sampled", student, top.indices[:, 0], top.indices, top.values)
    outside = teacher.topk(4, -1).indices[:, 3]  # not in any row of the top 3
    loss = sampled_reverse_kl_loss(
        LossSpec("reverse_kl_sampled"), student, outside, top.indices, top.values, torch.zeros(len(outside))
    )
    assert torch.isnan(loss)  # a row without the sampled token is a broken record, not a zero
