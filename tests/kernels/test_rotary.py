"""RoPE and the fused RoPE + KV store against their references."""

from __future__ import annotations

import pytest
import torch

from tandem.kernels.checks import KernelInputError
from tandem.kernels.rotary import rotary, rotary_ref
from tandem.kernels.rotary_store_kv import rotary_store_kv, rotary_store_kv_ref
from tests.kernels.inputs import (
    DEVICE,
    DTYPES,
    ELEMENTWISE_TOL,
    poisoned,
    randn,
    rel_err,
    rope_tables,
)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("tokens", "heads", "head_dim"), [(5, 3, 16), (2, 6, 64), (1, 1, 24)])
def test_rotary_matches_reference(dtype: torch.dtype, tokens: int, heads: int, head_dim: int) -> None:
    gen = torch.Generator().manual_seed(tokens + heads)
    cos, sin = rope_tables(300, head_dim)
    positions = torch.randint(0, 300, (tokens,), generator=gen).to(DEVICE)
    x = randn(gen, tokens, heads + 2, head_dim, dtype=dtype)[:, 1 : heads + 1]  # strided
    out = poisoned(tokens, heads, head_dim, dtype=dtype)
    rotary(x, positions, cos, sin, out=out)
    assert rel_err(out, rotary_ref(x, positions, cos, sin)) < ELEMENTWISE_TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("tokens", "heads", "kv_heads", "head_dim", "block_size"),
    [(6, 6, 2, 16, 8), (3, 5, 5, 32, 16), (1, 4, 1, 24, 8)],
)
def test_rotary_store_kv_matches_reference(
    dtype: torch.dtype, tokens: int, heads: int, kv_heads: int, head_dim: int, block_size: int
) -> None:
    gen = torch.Generator().manual_seed(tokens * heads)
    num_blocks = 4
    cos, sin = rope_tables(200, head_dim)
    positions = torch.randint(0, 200, (tokens,), generator=gen).to(DEVICE)
    qkv = randn(gen, tokens, heads + 2 * kv_heads, head_dim, dtype=dtype)
    q, k, v = qkv.split([heads, kv_heads, kv_heads], dim=1)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:tokens]
    slots[1::4] = -1
    slots = slots.to(DEVICE)
    caches = [poisoned(num_blocks, block_size, kv_heads, head_dim, dtype=dtype) for _ in range(4)]
    q_out = poisoned(tokens, heads, head_dim, dtype=dtype)
    rotary_store_kv(q, k, v, positions, cos, sin, caches[0], caches[1], slots, out=q_out)
    q_ref = rotary_store_kv_ref(q, k, v, positions, cos, sin, caches[2], caches[3], slots)
    assert rel_err(q_out, q_ref) < ELEMENTWISE_TOL[dtype]
    # The same slots hold numbers, the rest stays NaN; the numbers match.
    for got, want in ((caches[0], caches[2]), (caches[1], caches[3])):
        assert torch.equal(got.isnan(), want.isnan())
        written = want.isfinite()
        assert rel_err(got[written], want[written]) < ELEMENTWISE_TOL[dtype]


def test_rotary_rejects_wrong_table_width() -> None:
    cos, sin = rope_tables(10, 16)
    with pytest.raises(KernelInputError, match="head_dim // 2"):
        rotary(torch.randn(2, 2, 32, device=DEVICE), torch.zeros(2, dtype=torch.long, device=DEVICE), cos, sin)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_store_kv_writes_rotated_k_in_place(dtype: torch.dtype) -> None:
    """k_out=k: every token's k (skipped slots too) becomes its rotation,
    read before it is overwritten; the cache gets the same rotated rows."""
    gen = torch.Generator().manual_seed(11)
    tokens, heads, kv_heads, head_dim, block_size = 7, 6, 2, 16, 8
    cos, sin = rope_tables(100, head_dim)
    positions = torch.randint(0, 100, (tokens,), generator=gen).to(DEVICE)
    qkv = randn(gen, tokens, heads + 2 * kv_heads, head_dim, dtype=dtype)
    k_before = qkv[:, heads : heads + kv_heads].clone()
    q, k, v = qkv.split([heads, kv_heads, kv_heads], dim=1)
    slots = torch.tensor([3, -1, 0, 9, 12, -1, 5]).to(DEVICE)
    cache_k, cache_v = (poisoned(2, block_size, kv_heads, head_dim, dtype=dtype) for _ in range(2))
    rotary_store_kv(q, k, v, positions, cos, sin, cache_k, cache_v, slots, k_out=k)
    want = rotary_ref(k_before, positions, cos, sin)
    assert rel_err(k, want) < ELEMENTWISE_TOL[dtype]
    assert not torch.equal(k, k_before)
    stored = cache_k.view(-1, kv_heads, head_dim)[slots[slots >= 0]]
    assert torch.equal(stored, k[slots >= 0])


def test_rotary_store_kv_rejects_mismatched_k_out() -> None:
    q, k, v = (torch.randn(3, h, 16, device=DEVICE) for h in (4, 2, 2))
    cos, sin = rope_tables(10, 16)
    cache = torch.zeros(2, 4, 2, 16, device=DEVICE)
    index = torch.zeros(3, dtype=torch.long, device=DEVICE)
    with pytest.raises(KernelInputError, match="k_out"):
        rotary_store_kv(
            q, k, v, index, cos, sin, cache, cache.clone(), index,
            k_out=torch.zeros(3, 2, 8, device=DEVICE),
        )  # fmt: skip
