"""The student's batch: answer logits from the kept positions equal the full logits there."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cdscale.student.trainer import answer_logits, collate


def _record(ids, answer_start, vocab=64, k=3):
    n = len(ids) - answer_start
    return {
        "input_ids": ids,
        "answer_start": answer_start,
        "topk_ids": [[ids[answer_start + j]] + list(range(k)) for j in range(n)],
        "topk_logprobs": [[-0.1] + [-5.0] * k for _ in range(n)],
    }


def test_answer_logits_match_full_logits_at_answer_positions():
    torch.manual_seed(0)
    model = LlamaForCausalLM(
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
    records = [
        _record([1, 5, 6, 7, 8, 9, 10], 5),
        _record([1, 5, 6, 11, 12, 13, 14, 15, 16], 4),
        _record([1, 20, 21, 22], 3),
    ]
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
