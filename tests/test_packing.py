"""Weights as numpy arrays: a lossless round trip for every dtype (bfloat16 included), and
out-of-band buffers under pickle protocol 5, which is what lets Ray's object store move
them without copies."""

import pickle

import pytest
import torch

from cdscale.sync.packing import pack


def named() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        ("embed.weight", torch.randn(7, 5, generator=g)),
        ("norm.weight", torch.randn(3, generator=g).to(torch.bfloat16)),
        ("scalar", torch.tensor(2.5, dtype=torch.float64)),
        ("empty", torch.zeros(0, 4)),
        ("ids", torch.arange(11, dtype=torch.int64).view(11, 1)),
        ("strided", torch.randn(4, 6, generator=g).t()),  # not contiguous
    ]


def test_round_trip_is_exact_for_every_dtype_and_shape():
    original = named()
    packed = pack(original, copy=True)
    out = packed.named_tensors()
    assert [n for n, _ in out] == [n for n, _ in original]
    for (_, a), (_, b) in zip(original, out):
        assert b.dtype == a.dtype and b.shape == a.shape
        assert torch.equal(a, b)
    assert packed.nbytes == sum(t.numel() * t.element_size() for _, t in original)


def test_copy_false_shares_memory_and_copy_true_does_not():
    w = torch.zeros(4)
    shared, copied = pack([("w", w)], copy=False), pack([("w", w)], copy=True)
    w += 1
    assert shared.named_tensors()[0][1].sum() == 4
    assert copied.named_tensors()[0][1].sum() == 0


def test_pickle5_moves_the_weights_out_of_band_into_read_only_memory():
    packed = pack(named(), copy=True)
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(packed, protocol=5, buffer_callback=buffers.append)
    assert sum(b.raw().nbytes for b in buffers) == packed.nbytes
    assert len(data) < 2000  # names and dtypes only, not the weights
    readonly = [memoryview(bytes(b.raw())) for b in buffers]  # the object store hands out read-only memory
    restored = pickle.loads(data, buffers=readonly)
    assert not any(a.flags.writeable for a in restored.arrays)
    for (_, a), (_, b) in zip(named(), restored.named_tensors()):
        assert b.dtype == a.dtype and torch.equal(a, b)


def test_buckets_keep_order_and_stay_under_the_limit_except_for_a_larger_single_parameter():
    from cdscale.sync.packing import buckets

    sizes = [("a", 3), ("b", 4), ("c", 10), ("d", 1), ("e", 2), ("f", 5)]
    groups = list(buckets(sizes, 7, nbytes=lambda n: n))
    assert [[name for name, _ in g] for g in groups] == [["a", "b"], ["c"], ["d", "e"], ["f"]]
    assert [p for g in groups for p in g] == sizes  # every parameter once, in order
    assert list(buckets([], 7, nbytes=lambda n: n)) == []


def test_a_broadcast_bucket_unpacks_to_the_tensors_it_was_packed_from():
    from cdscale.sync.broadcast import bucket_bytes, pack_bucket, plan_entry, unpack_bucket

    original = named()
    plan = [plan_entry(n, t.dtype, t.shape) for n, t in original]
    buffer = pack_bucket([t for _, t in original])
    assert buffer.dtype == torch.uint8 and buffer.numel() == bucket_bytes(plan)
    out = unpack_bucket(buffer, plan)
    assert [n for n, _ in out] == [n for n, _ in original]
    for (_, a), (_, b) in zip(original, out):
        assert b.dtype == a.dtype and b.shape == a.shape and torch.equal(a, b)
    with pytest.raises(ValueError, match="does not match its plan"):
        unpack_bucket(buffer[:-2], plan)
