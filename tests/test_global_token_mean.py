"""Loss normalization across ranks: with ranks that hold different numbers of answer tokens,
DeepSpeed's average of the ranks' gradients must be the gradient of the global per-token
mean, not of the mean of the ranks' means. Two ranks are emulated in one process: the same
tiny Llama, a one-process gloo group for the trainer's finiteness all-reduce, and an engine
stand-in that keeps each step's gradients, averaged here as DeepSpeed averages them."""

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cdscale.student.losses import distillation_loss
from cdscale.student.trainer import (
    StudentTrainer,
    TrainerSettings,
    answer_logits,
    answer_token_count,
    collate,
    combine_rank_stats,
    rank_loss,
)

VOCAB = 64
WORLD = 2


def _model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    )


def _record(prompt: int, answer: int, seed: int) -> dict:
    """A record of `prompt` + `answer` random tokens; the teacher's top-3 puts most mass on the token itself."""
    ids = torch.randint(1, VOCAB, (prompt + answer,), generator=torch.Generator().manual_seed(seed)).tolist()
    return {
        "input_ids": ids,
        "answer_start": prompt,
        "topk_ids": [[ids[prompt + j], 1, 2] for j in range(answer)],
        "topk_logprobs": [[-0.2, -2.0, -3.0]] * answer,
    }


# Global batch [0, 1, 2, 3]: rank 0 takes records 0 and 2 (3 answer tokens), rank 1 records 1 and 3 (13).
RECORDS = [_record(4, 1, 0), _record(3, 6, 1), _record(5, 2, 2), _record(2, 7, 3)]
BATCH = [0, 1, 2, 3]


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return grads


def _global_mean(model: torch.nn.Module, loss: str = "forward_kl_topk") -> tuple[torch.Tensor, list, float]:
    """The global per-token mean loss over the concatenated batch, its gradient, its token accuracy."""
    batch = collate([RECORDS[i] for i in BATCH], pad_id=0)
    logits = answer_logits(model, batch)
    value = distillation_loss(loss, logits, batch["target_ids"], batch["topk_ids"], batch["topk_logprobs"])
    value.backward()
    accuracy = (logits.argmax(-1) == batch["target_ids"]).float().mean().item()
    return value.detach(), _grads(model), accuracy


def _assert_grads_close(got: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss", ["forward_kl_topk", "hard"])
def test_rank_losses_average_to_the_gradient_of_the_global_token_mean(loss):
    model = _model()
    expected_loss, expected_grads, _ = _global_mean(model, loss)
    shares = [[RECORDS[i] for i in BATCH[r::WORLD]] for r in range(WORLD)]
    total = answer_token_count(RECORDS[i] for i in BATCH)
    assert [answer_token_count(s) for s in shares] == [3, 13] and total == 16

    def averaged_rank_grads(per_rank_loss) -> tuple[float, list[torch.Tensor]]:
        """The ranks' losses summed (over world_size: what the update follows) and their averaged gradients."""
        losses, grads = [], []
        for share in shares:
            batch = collate(share, pad_id=0)
            value = per_rank_loss(answer_logits(model, batch), batch)
            value.backward()
            losses.append(value.item())
            grads.append(_grads(model))
        return sum(losses) / WORLD, [sum(g) / WORLD for g in zip(*grads)]  # DeepSpeed averages over ranks

    value, grads = averaged_rank_grads(lambda logits, batch: rank_loss(loss, logits, batch, WORLD, total))
    assert value == pytest.approx(expected_loss.item(), rel=1e-5)
    _assert_grads_close(grads, expected_grads)

    # The check tells the two apart: a per-rank mean (the mean of rank means) is another gradient.
    def rank_mean(logits, batch):
        return distillation_loss(loss, logits, batch["target_ids"], batch["topk_ids"], batch["topk_logprobs"])

    _, mean_of_means = averaged_rank_grads(rank_mean)
    assert max((m - e).abs().max().item() for m, e in zip(mean_of_means, expected_grads)) > 1e-3


class _Engine:
    """What `train_step` uses of a DeepSpeed engine, on one process: `step` keeps the gradients
    (the test averages them over ranks as DeepSpeed would) and leaves the weights alone."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.module, self.global_steps, self.grads = model, 0, []

    def __call__(self, **inputs):
        return self.module(**inputs)

    def train(self) -> None:
        self.module.train()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.grads.append(_grads(self.module))
        self.global_steps += 1


@pytest.fixture
def one_process_group():
    """The trainer all-reduces a finiteness flag; a group of one process answers it here."""
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


def _trainers(model: torch.nn.Module, pack_tokens: int = 0) -> list[StudentTrainer]:
    trainers = []
    for rank in range(WORLD):
        t = StudentTrainer(rank, WORLD, TrainerSettings("", pack_tokens=pack_tokens), {})
        t.engine, t.optimizer, t.pad_id = _Engine(model), SimpleNamespace(param_groups=[{}]), 0
        t.device = torch.device("cpu")
        t.set_records(RECORDS)
        trainers.append(t)
    return trainers


@pytest.mark.parametrize("pack_tokens", [0, 24], ids=["padded", "packed"])
def test_train_steps_take_their_share_of_the_global_batch_and_report_the_global_token_mean(
    one_process_group, pack_tokens
):
    model = _model()
    expected_loss, expected_grads, expected_accuracy = _global_mean(model)
    trainers = _trainers(model, pack_tokens)
    [stats0], [stats1] = (t.train_steps([BATCH], [1e-3]) for t in trainers)  # each rank gets the global batch
    assert [stats0["answer_tokens"], stats1["answer_tokens"]] == [3, 13]
    averaged = [sum(g) / WORLD for g in zip(*(t.engine.grads[0] for t in trainers))]  # as DeepSpeed averages
    _assert_grads_close(averaged, expected_grads)
    step = combine_rank_stats([stats0, stats1])
    assert step["loss"] == pytest.approx(expected_loss.item(), rel=1e-5)
    assert step["token_accuracy"] == pytest.approx(expected_accuracy)
    assert step["answer_tokens"] == 16
    assert step["tokens"] == sum(len(r["input_ids"]) for r in RECORDS)


def test_train_step_alone_is_the_per_token_mean_of_its_records(one_process_group):
    """A direct call without the global count: with one rank, the per-token mean of the records."""
    model = _model()
    expected_loss, expected_grads, _ = _global_mean(model)
    t = _trainers(model)[0]
    t.world_size = 1
    stats = t.train_step([RECORDS[i] for i in BATCH], 1e-3)
    assert stats["loss"] == pytest.approx(expected_loss.item(), rel=1e-5)
    _assert_grads_close(t.engine.grads[0], expected_grads)


def test_a_non_finite_loss_still_stops_the_step(one_process_group):
    t = _trainers(_model())[0]
    broken = {**RECORDS[0], "topk_logprobs": [[float("nan"), -2.0, -3.0]]}
    t.set_records([broken] + RECORDS[1:])
    with pytest.raises(FloatingPointError, match="not finite"):
        t.train_steps([BATCH], [1e-3])
    assert t.engine.grads == []  # no update
