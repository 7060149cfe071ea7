"""store_kv: the Triton scatter against index_copy_, bit for bit."""

from __future__ import annotations

import pytest
import torch

from tandem.kernels.checks import KernelInputError
from tandem.kernels.store_kv import store_kv, store_kv_ref
from tests.kernels.inputs import DEVICE, DTYPES, poisoned, randn

CASES = [
    # (tokens, num_kv_heads, head_dim, block_size, num_blocks)
    (7, 3, 16, 8, 5),
    (20, 2, 64, 16, 4),
    (1, 1, 24, 8, 2),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("tokens", "heads", "head_dim", "block_size", "num_blocks"), CASES)
def test_store_kv_matches_reference(
    dtype: torch.dtype, tokens: int, heads: int, head_dim: int, block_size: int, num_blocks: int
) -> None:
    gen = torch.Generator().manual_seed(tokens * 31 + head_dim)
    # k and v as strided views into one fused qkv-like buffer, as the model makes them.
    fused = randn(gen, tokens, 2 * heads + 1, head_dim, dtype=dtype)
    k, v = fused[:, :heads], fused[:, heads : 2 * heads]
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:tokens]
    slots[::3] = -1  # some tokens are not stored
    slots = slots.to(DEVICE)
    caches = [poisoned(num_blocks, block_size, heads, head_dim, dtype=dtype) for _ in range(4)]
    store_kv(k, v, caches[0], caches[1], slots)
    store_kv_ref(k, v, caches[2], caches[3], slots)
    # Exact copies, and NaN left exactly where nothing was to be written.
    torch.testing.assert_close(caches[0], caches[2], rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(caches[1], caches[3], rtol=0, atol=0, equal_nan=True)
    stored = int((slots >= 0).sum())
    assert int(caches[0].isfinite().all(-1).all(-1).sum()) == stored


def test_store_kv_rejects_mismatched_heads() -> None:
    k = torch.randn(4, 3, 16)
    cache = torch.randn(2, 8, 2, 16)
    with pytest.raises(KernelInputError, match="num_kv_heads"):
        store_kv(k, k, cache, cache.clone(), torch.arange(4))


def test_store_kv_rejects_non_power_of_two_block_size() -> None:
    k = torch.randn(4, 2, 16)
    cache = torch.randn(2, 12, 2, 16)
    with pytest.raises(KernelInputError, match="power of two"):
        store_kv(k, k, cache, cache.clone(), torch.arange(4))
