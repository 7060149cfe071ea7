"""Paged prefill attention (causal, variable length, cached context) against
the float32 reference."""

from __future__ import annotations

import itertools

import pytest
import torch

from tandem.kernels.checks import KernelInputError
from tandem.kernels.paged_prefill_attention import (
    paged_prefill_attention,
    paged_prefill_attention_ref,
)
from tests.kernels.inputs import (
    ATTENTION_TOL,
    DEVICE,
    DTYPES,
    PagedKV,
    make_paged,
    poisoned,
    randn,
    rel_err,
    upcast,
)

# (query_lens, seq_lens, num_heads, num_kv_heads, head_dim, block_size)
SMALL = [
    # a 1-token prompt, a chunk after 13 cached tokens, an exact block multiple
    ([1, 37, 16], [1, 50, 16], 6, 2, 16, 8),
    ([20, 3], [20, 40], 5, 5, 24, 16),  # MHA, head_dim not a power of two; decode-like row
]


def _new_rows(
    kv: PagedKV, query_lens: list[int], seq_lens: list[int], heads: int, own_k: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """This step's K/V rows copied out of the cache, as strided views of one
    qkv-like buffer (the model's layout), NaN where q would sit. `own_k`: k is a
    contiguous copy of its own, as after QK norm (Qwen3), while v stays a view."""
    _, block_size, kv_heads, head_dim = kv.k_cache.shape
    buf = poisoned(sum(query_lens), heads + 2 * kv_heads, head_dim, dtype=kv.k_cache.dtype)
    t = 0
    for b, (length, n) in enumerate(zip(query_lens, seq_lens, strict=True)):
        for p in range(n - length, n):
            blk = int(kv.block_tables[b, p // block_size])
            buf[t, heads : heads + kv_heads] = kv.k_cache[blk, p % block_size]
            buf[t, heads + kv_heads :] = kv.v_cache[blk, p % block_size]
            t += 1
    k, v = buf[:, heads : heads + kv_heads], buf[:, heads + kv_heads :]
    return (k.contiguous() if own_k else k), v


def _run(
    query_lens: list[int], seq_lens: list[int], heads: int, kv_heads: int, head_dim: int,
    block_size: int, dtype: torch.dtype, split: bool = False, own_k: bool = False,
    **tiles: int | bool | None,
) -> None:  # fmt: skip
    gen = torch.Generator().manual_seed(sum(seq_lens) + 7 * heads)
    kv = make_paged(
        gen, seq_lens, block_size=block_size, num_kv_heads=kv_heads, head_dim=head_dim, dtype=dtype
    )
    tokens = sum(query_lens)
    q = randn(gen, tokens, heads, head_dim, dtype=dtype)
    starts = torch.tensor([0, *itertools.accumulate(query_lens)], dtype=torch.int32, device=DEVICE)
    scale = head_dim**-0.5
    out = poisoned(tokens, heads, head_dim, dtype=dtype)
    new: dict[str, torch.Tensor] = {}
    if split:
        new["k_new"], new["v_new"] = _new_rows(kv, query_lens, seq_lens, heads, own_k)
    paged_prefill_attention(
        q, kv.k_cache, kv.v_cache, kv.block_tables, starts, kv.seq_lens, scale,
        max_query_len=max(query_lens), out=out, **new, **tiles,
    )  # fmt: skip
    f32 = upcast(kv)
    ref = paged_prefill_attention_ref(
        q.float(), f32.k_cache, f32.v_cache, f32.block_tables, starts, f32.seq_lens, scale
    )
    err = rel_err(out, ref)
    assert err < ATTENTION_TOL[dtype], f"relative L2 error {err:.2e}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("query_lens", "seq_lens", "heads", "kv_heads", "head_dim", "block_size"), SMALL
)
def test_prefill_matches_reference(
    dtype: torch.dtype, query_lens: list[int], seq_lens: list[int], heads: int, kv_heads: int,
    head_dim: int, block_size: int,
) -> None:  # fmt: skip
    _run(query_lens, seq_lens, heads, kv_heads, head_dim, block_size, dtype, block_m=16, block_n=16)


@pytest.mark.parametrize("dtype", DTYPES)
def test_prefill_packed_gqa_matches_reference(dtype: torch.dtype) -> None:
    # Group of 3 padded to 4 rows per token: 4 tokens per 16-row tile.
    _run([1, 37, 16], [1, 50, 16], 6, 2, 16, 8, dtype, block_m=16, block_n=16, pack_gqa=True)


# Split: the chunk's own rows from contiguous k_new/v_new (TMA descriptors or
# pointers), earlier context from the cache. Cases: prefix not a tile multiple,
# a 1-token prompt next to longer ones, a long single prompt, and MHA with a
# head_dim that is not a power of two (pointer path only).
SPLIT = [
    ([1, 37, 16], [1, 50, 16], 6, 2, 16, 8),
    ([40], [40], 8, 2, 16, 16),
    ([20, 3], [20, 40], 5, 5, 24, 16),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("query_lens", "seq_lens", "heads", "kv_heads", "head_dim", "block_size"), SPLIT
)
@pytest.mark.parametrize("tma", [False, None])
def test_prefill_split_matches_reference(
    dtype: torch.dtype, query_lens: list[int], seq_lens: list[int], heads: int, kv_heads: int,
    head_dim: int, block_size: int, tma: bool | None,
) -> None:  # fmt: skip
    _run(
        query_lens, seq_lens, heads, kv_heads, head_dim, block_size, dtype, split=True,
        block_m=16, block_n=16, pack_gqa=kv_heads < heads, tma=tma,
    )  # fmt: skip


# k_new and v_new with different row strides (QK norm copies k; v stays a view of the
# projection output). Head sizes that are not powers of two take the pointer path,
# which once read v with k's strides: wrong outputs for Qwen3-style models.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [12, 24, 40])
@pytest.mark.parametrize("tma", [False, None])
def test_prefill_split_with_k_and_v_in_different_layouts(
    dtype: torch.dtype, head_dim: int, tma: bool | None
) -> None:
    _run(
        [20, 3, 9], [20, 40, 9], 4, 2, head_dim, 16, dtype, split=True, own_k=True,
        block_m=16, block_n=16, pack_gqa=True, tma=tma,
    )  # fmt: skip


def test_prefill_split_rejects_k_new_without_v_new() -> None:
    k = torch.randn(4, 8, 2, 16, device=DEVICE)
    with pytest.raises(KernelInputError, match="k_new and v_new"):
        paged_prefill_attention(
            torch.randn(5, 4, 16, device=DEVICE), k, k.clone(), torch.zeros(1, 2, dtype=torch.int32, device=DEVICE),
            torch.tensor([0, 5], dtype=torch.int32, device=DEVICE), torch.full((1,), 5, dtype=torch.int32, device=DEVICE),
            1.0, max_query_len=5, k_new=torch.randn(5, 2, 16, device=DEVICE),
        )  # fmt: skip


GPU_CASES = [
    ([1000, 1, 257], [1000, 600, 2000], 32, 8, 128, 16),  # prompt, decode row, late chunk
    ([128, 4096], [128, 4096], 32, 8, 128, 16),
    ([77, 500], [300, 500], 16, 2, 64, 32),
    ([333], [333], 12, 4, 16, 8),  # the tiny model's head_dim
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("query_lens", "seq_lens", "heads", "kv_heads", "head_dim", "block_size"), GPU_CASES
)
@pytest.mark.parametrize(
    ("pack_gqa", "split", "hopper"),
    # hopper None: the launcher's choice, the Gluon kernel wherever it applies (sm_90).
    [(False, False, None), (True, False, None), (True, True, False), (False, True, False),
     (None, True, None), (False, True, None)],
)  # fmt: skip
def test_prefill_matches_reference_gpu(
    dtype: torch.dtype, query_lens: list[int], seq_lens: list[int], heads: int, kv_heads: int,
    head_dim: int, block_size: int, pack_gqa: bool | None, split: bool, hopper: bool | None,
) -> None:  # fmt: skip
    _run(
        query_lens, seq_lens, heads, kv_heads, head_dim, block_size, dtype, split,
        pack_gqa=pack_gqa, hopper=hopper,
    )  # fmt: skip


def _is_sm90() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not _is_sm90(), reason="needs an sm_90 GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "tiles",
    [
        {"block_n": 128, "num_stages": 3},
        {"block_n": 64, "num_stages": 3},
        {"block_n": 64, "num_stages": 2, "pack_gqa": False},
    ],
)
def test_prefill_hopper_tiles_match_reference(
    dtype: torch.dtype, tiles: dict[str, int | bool]
) -> None:
    # The Llama-3-8B shape must take the Gluon kernel on sm_90 (hopper=True raises otherwise).
    _run(
        [1000, 1, 257, 64], [1300, 600, 2000, 64], 32, 8, 128, 16, dtype, True, hopper=True, **tiles
    )


def test_prefill_rejects_short_query_start_loc() -> None:
    k = torch.randn(4, 8, 2, 16)
    with pytest.raises(KernelInputError, match="query_start_loc"):
        paged_prefill_attention(
            torch.randn(5, 4, 16), k, k.clone(), torch.zeros(2, 2, dtype=torch.int32),
            torch.tensor([0, 5], dtype=torch.int32), torch.ones(2, dtype=torch.int32), 1.0,
            max_query_len=5,
        )  # fmt: skip


def test_prefill_hopper_rejected_where_it_cannot_run() -> None:
    gen = torch.Generator().manual_seed(3)
    kv = make_paged(gen, [20], block_size=8, num_kv_heads=2, head_dim=16, dtype=torch.float32)
    q = randn(gen, 20, 4, 16, dtype=torch.float32)
    starts = torch.tensor([0, 20], dtype=torch.int32, device=DEVICE)
    args = (q, kv.k_cache, kv.v_cache, kv.block_tables, starts, kv.seq_lens, 0.25)
    with pytest.raises(KernelInputError, match="hopper needs k_new and v_new"):
        paged_prefill_attention(*args, max_query_len=20, hopper=True)
    k_new, v_new = _new_rows(kv, [20], [20], 4)
    # float32 and head_dim 16 (and a CPU device here) are outside the Gluon kernel's range.
    with pytest.raises(KernelInputError, match="hopper needs an sm_90 GPU"):
        paged_prefill_attention(*args, max_query_len=20, k_new=k_new, v_new=v_new, hopper=True)
