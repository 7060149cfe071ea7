"""Paged decode attention (GQA, split-K) against the float32 reference."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tandem.kernels.checks import KernelInputError
from tandem.kernels.paged_decode_attention import (
    choose_splits,
    paged_decode_attention,
    paged_decode_attention_ref,
)
from tests.kernels.inputs import (
    ATTENTION_TOL,
    DTYPES,
    make_paged,
    poisoned,
    randn,
    rel_err,
    upcast,
)

# (seq_lens, num_heads, num_kv_heads, head_dim, block_size, num_splits)
SMALL = [
    ([1, 16, 45], 6, 2, 16, 8, 1),  # length 1, an exact block multiple, a ragged one
    ([1, 16, 45], 6, 2, 16, 8, 3),  # the same through split-K, one split empty for short rows
    ([33, 32], 5, 5, 24, 16, 2),  # MHA, head_dim not a power of two
    ([70], 8, 1, 32, 8, 1),  # MQA: one KV head for all eight query heads
]


def _run(
    seq_lens: list[int], heads: int, kv_heads: int, head_dim: int, block_size: int,
    splits: int | None, dtype: torch.dtype, block_n: int | None = None,
    min_split: int | None = None, spare_columns: int = 0,
) -> None:  # fmt: skip
    gen = torch.Generator().manual_seed(sum(seq_lens) + heads)
    kv = make_paged(
        gen, seq_lens, block_size=block_size, num_kv_heads=kv_heads, head_dim=head_dim, dtype=dtype
    )
    if spare_columns:
        # A table far wider than any sequence, as a CUDA graph captured for the longest
        # context passes it: unused entries point at valid blocks.
        extra = torch.randint(0, kv.k_cache.shape[0], (len(seq_lens), spare_columns), generator=gen)
        tables = torch.cat([kv.block_tables, extra.to(kv.block_tables)], dim=1).contiguous()
        kv = dataclasses.replace(kv, block_tables=tables)
    q = randn(gen, len(seq_lens), heads, head_dim, dtype=dtype)
    scale = head_dim**-0.5
    out = poisoned(len(seq_lens), heads, head_dim, dtype=dtype)
    paged_decode_attention(
        q, kv.k_cache, kv.v_cache, kv.block_tables, kv.seq_lens, scale,
        out=out, num_splits=splits, block_n=block_n, min_split=min_split,
    )  # fmt: skip
    f32 = upcast(kv)
    ref = paged_decode_attention_ref(
        q.float(), f32.k_cache, f32.v_cache, f32.block_tables, f32.seq_lens, scale
    )
    err = rel_err(out, ref)
    assert err < ATTENTION_TOL[dtype], f"relative L2 error {err:.2e}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("seq_lens", "heads", "kv_heads", "head_dim", "block_size", "splits"), SMALL
)
def test_decode_matches_reference(
    dtype: torch.dtype, seq_lens: list[int], heads: int, kv_heads: int, head_dim: int,
    block_size: int, splits: int,
) -> None:  # fmt: skip
    _run(seq_lens, heads, kv_heads, head_dim, block_size, splits, dtype, block_n=16, min_split=16)


# Each sequence's own length is cut into the partitions at run time: rows of 1, 16, 45
# and 100 tokens in a table 40 blocks wide, 6 partitions of at least 16 tokens (the
# short rows use fewer; the reduce must weigh only those).
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("splits", [2, 6])
def test_decode_splits_each_sequence_by_its_own_length(dtype: torch.dtype, splits: int) -> None:
    _run([1, 16, 45, 100], 6, 2, 16, 8, splits, dtype, block_n=16, min_split=16, spare_columns=28)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("seq_lens", "heads", "kv_heads", "head_dim", "block_size", "splits"),
    [
        ([1, 700, 4096, 640], 32, 8, 128, 16, None),  # Llama-3-8B heads, heuristic splits
        ([5000], 32, 8, 128, 16, None),  # batch 1: split-K
        ([129, 3000, 17], 32, 8, 128, 16, 7),
        ([300, 1], 16, 2, 64, 32, None),
        ([100, 2000], 12, 4, 16, 8, None),  # the tiny model's head_dim
        ([1000, 3], 14, 2, 64, 16, 4),  # group of 7
    ],
)
def test_decode_matches_reference_gpu(
    dtype: torch.dtype, seq_lens: list[int], heads: int, kv_heads: int, head_dim: int,
    block_size: int, splits: int | None,
) -> None:  # fmt: skip
    _run(seq_lens, heads, kv_heads, head_dim, block_size, splits, dtype)


def test_choose_splits_fills_the_gpu_only_when_needed() -> None:
    assert choose_splits(batch=64, num_kv_heads=8, max_context=4096, sm_count=132) == 1
    assert choose_splits(batch=1, num_kv_heads=8, max_context=32768, sm_count=132) == 33
    assert choose_splits(batch=1, num_kv_heads=8, max_context=300, sm_count=132) == 2
    assert choose_splits(batch=1, num_kv_heads=8, max_context=100, sm_count=132) == 1


def test_decode_rejects_bad_head_counts() -> None:
    k = torch.randn(4, 8, 3, 16)
    with pytest.raises(KernelInputError, match="multiple of num_kv_heads"):
        paged_decode_attention(
            torch.randn(2, 4, 16), k, k.clone(), torch.zeros(2, 2, dtype=torch.int32),
            torch.ones(2, dtype=torch.int32), 1.0,
        )  # fmt: skip


def test_decode_rejects_mixed_dtypes() -> None:
    k = torch.randn(4, 8, 2, 16)
    with pytest.raises(KernelInputError, match="dtypes differ"):
        paged_decode_attention(
            torch.randn(2, 4, 16, dtype=torch.float16), k, k.clone(),
            torch.zeros(2, 2, dtype=torch.int32), torch.ones(2, dtype=torch.int32), 1.0,
        )  # fmt: skip
