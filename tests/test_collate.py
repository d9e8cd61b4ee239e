"""The student's batch: answer logits from the kept positions equal the full logits there,
and a packed batch (several sequences per row) gives every answer token the logits and the
loss it gets in a padded batch."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cdscale.student.losses import distillation_loss
from cdscale.student.trainer import answer_logits, collate, pack_rows


def _record(ids, answer_start, vocab=64, k=3):
    n = len(ids) - answer_start
    return {
        "input_ids": ids,
        "answer_start": answer_start,
        "topk_ids": [[ids[answer_start + j]] + list(range(k)) for j in range(n)],
        "topk_logprobs": [[-0.1] + [-5.0] * k for _ in range(n)],
    }


def _model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    ).eval()


# Different prompt and answer lengths, so rows need different positions.
RECORDS = [
    _record([1, 5, 6, 7, 8, 9, 10], 5),
    _record([1, 5, 6, 11, 12, 13, 14, 15, 16], 4),
    _record([1, 20, 21, 22], 3),
    _record([1, 30, 31, 32, 33], 2),
    _record([1, 40, 41], 1),
]


def test_answer_logits_match_full_logits_at_answer_positions():
    model, records = _model(), RECORDS[:3]
    batch = collate(records, pad_id=0)
    assert batch["keep"].tolist() == sorted(set(batch["keep"].tolist()))
    assert len(batch["keep"]) < batch["input_ids"].shape[1]  # positions nobody needs are not computed
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        kept = answer_logits(model, batch)
    expected = torch.stack(
        [full[i, j - 1] for i, r in enumerate(records) for j in range(r["answer_start"], len(r["input_ids"]))]
    )
    assert kept.shape == expected.shape == (2 + 5 + 1, 64)
    torch.testing.assert_close(kept, expected, rtol=1e-5, atol=1e-5)
    assert batch["target_ids"].tolist() == [t for r in records for t in r["input_ids"][r["answer_start"] :]]


def test_pack_rows_fills_rows_first_fit_longest_first():
    lengths = [7, 9, 4, 5, 3, 12]
    rows = pack_rows(lengths, 12)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    # 12 alone; then 9, 7 + 5, 4 (3 left after 9 and 0 after 7 + 5: a new row), and 3 after 9
    assert rows == [[5], [1, 4], [0, 3], [2]]
    assert pack_rows([20, 3], 8) == [[0], [1]]  # longer than a row: a row of its own


@pytest.mark.parametrize("row_tokens", [9, 16, 64])
def test_a_packed_batch_gives_each_answer_token_its_padded_logits_and_loss(row_tokens):
    model = _model()
    padded, packed = collate(RECORDS, pad_id=0), collate(RECORDS, pad_id=0, pack_tokens=row_tokens)
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] < len(RECORDS)
    assert packed["input_ids"].numel() < padded["input_ids"].numel()  # less padding computed
    with torch.no_grad():
        expected, got = answer_logits(model, padded), answer_logits(model, packed)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for key in ("target_ids", "topk_ids", "topk_logprobs"):
        assert torch.equal(packed[key], padded[key])
    teacher = [packed[k] for k in ("target_ids", "topk_ids", "topk_logprobs")]
    torch.testing.assert_close(
        distillation_loss("forward_kl_topk", got, *teacher),
        distillation_loss("forward_kl_topk", expected, *teacher),
        rtol=1e-6,
        atol=1e-6,
    )
    # The check can fail: the same rows with positions that run on across a row's sequences
    # (no restart, so each attends to the ones before it) give other logits.
    run_on = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1]).expand_as(packed["input_ids"])}
    with torch.no_grad():
        assert not torch.allclose(answer_logits(model, run_on), expected, atol=1e-3)
