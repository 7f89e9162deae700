"""``bucket_per_value``: golden values and bit-equality with ``bucket`` / ``bucket_np``."""

from __future__ import annotations

import numpy as np
import torch

from recsys.hashing import bucket, bucket_np, bucket_per_value, bucket_per_value_np, salt_for

IDS = [0, 1, -1, 2**63 - 1, -(2**63), 123456789, -987654321012]
SALT_NAMES = ["C1", "C1", "C2", "C2", None, "site_id", "C1#0"]
NUM_BUCKETS = [1000, 7, 2**31 - 1, 1, 97, 1000003, 65536]
GOLDEN = [667, 4, 34717481, 0, 71, 509219, 60860]


def _salts(names: list[str | None]) -> torch.Tensor:
    return torch.tensor([0 if n is None else salt_for(n) for n in names], dtype=torch.int64)


def test_golden_values() -> None:
    out = bucket_per_value(torch.tensor(IDS), _salts(SALT_NAMES), torch.tensor(NUM_BUCKETS))
    assert out.dtype == torch.int64
    assert out.tolist() == GOLDEN


def test_equals_bucket_value_by_value() -> None:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(-(2**63), 2**63 - 1, (500,), dtype=torch.int64, generator=gen)
    salts = _salts([f"f{i % 13}" for i in range(500)])
    sizes = torch.randint(1, 2**31 - 1, (500,), dtype=torch.int64, generator=gen)
    out = bucket_per_value(ids, salts, sizes)
    expected = [int(bucket(ids[i : i + 1], int(salts[i]), int(sizes[i]))[0]) for i in range(500)]
    assert out.tolist() == expected
    expected_np = [int(bucket_np(ids[i : i + 1].numpy(), int(salts[i]), int(sizes[i]))[0]) for i in range(500)]
    assert out.tolist() == expected_np
    assert bucket_per_value_np(ids.numpy(), salts.numpy(), sizes.numpy()).tolist() == expected


def test_segments_equal_bucket_per_key() -> None:
    """Flat ids of several keys, salts/sizes repeated per key: same as one ``bucket`` call per key."""
    gen = torch.Generator().manual_seed(1)
    names, sizes, lengths = ["C1", "C2", "C3"], [10, 1000, 2**31 - 1], [5, 0, 7]
    ids = torch.randint(-(2**40), 2**40, (sum(lengths),), generator=gen)
    counts = torch.tensor(lengths)
    out = bucket_per_value(
        ids,
        torch.repeat_interleave(_salts(names), counts),
        torch.repeat_interleave(torch.tensor(sizes), counts),
    )
    expected = torch.cat([bucket(seg, salt_for(n), s) for seg, n, s in zip(ids.split(lengths), names, sizes)])
    assert torch.equal(out, expected)
    assert bool((out >= 0).all())


def test_broadcasts_and_accepts_int32_ids() -> None:
    ids = torch.arange(-50, 50, dtype=torch.int32)
    out = bucket_per_value(ids, torch.tensor(salt_for("C7")), torch.tensor(37))
    assert torch.equal(out, bucket(ids.to(torch.int64), salt_for("C7"), 37))
    assert np.array_equal(out.numpy(), bucket_np(ids.numpy().astype(np.int64), salt_for("C7"), 37))


def test_empty() -> None:
    empty = torch.zeros(0, dtype=torch.int64)
    assert bucket_per_value(empty, empty, empty).numel() == 0


def test_torch_path_equals_the_numpy_path_used_on_cpu() -> None:
    """Non-CPU tensors hash with torch's signed int64 ops; both paths give the same rows."""
    from recsys.hashing import _bucket_per_value_torch

    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(-(2**63), 2**63 - 1, (10_000,), dtype=torch.int64, generator=gen)
    salts = _salts([f"f{i % 7}#{i % 3}" for i in range(10_000)])
    sizes = torch.randint(1, 2**31 - 1, (10_000,), dtype=torch.int64, generator=gen)
    assert torch.equal(_bucket_per_value_torch(ids, salts, sizes), bucket_per_value(ids, salts, sizes))
    assert _bucket_per_value_torch(torch.tensor(IDS), _salts(SALT_NAMES), torch.tensor(NUM_BUCKETS)).tolist() == GOLDEN
