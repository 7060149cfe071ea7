"""Paged decode attention: one query token per sequence over its paged KV,
with grouped-query attention and split-K.

Algorithm. One program owns (sequence, KV head, context partition). It loads
the query rows of every query head that shares that KV head (the GQA group,
padded to a tensor-core tile), then walks its partition of the context in
tiles of BLOCK_N tokens gathered through the block table: each K and V row is
read from memory once for the whole group. Scores and the running softmax
use the online form of Milakov & Gimelshein ("Online normalizer calculation
for softmax", 2018) as in FlashAttention (Dao et al., 2022), in base 2.

Split-K as in Flash-Decoding (Dao, Haziza, Massa, Sizov, 2023): when the batch
is too small to fill the GPU (a long context at batch 1), the context is cut
into partitions computed in parallel; each writes its normalized partial
output and log-sum-exp, and `_paged_decode_reduce_kernel` combines them with
weights exp(lse_i - max lse). The split count depends only on shapes (the
block table's width), never on the values in seq_lens, so the launch needs no
host sync and can be captured in a CUDA graph. Each sequence's own length is
cut into that many partitions at run time (in the kernel, from seq_lens, at
least `min_split` tokens each): a graph captured for the longest context
would otherwise give a 1k-token sequence to one partition of thousands of
tokens and leave the other programs idle.

Layout: q [B, num_heads, head_dim]; caches [num_blocks, block_size,
num_kv_heads, head_dim]; query head h reads KV head h // (num_heads // num_kv_heads).
PagedAttention: Kwon et al., SOSP 2023.
"""

from __future__ import annotations

import math

import torch

from tandem.kernels import checks
from tandem.kernels.store_kv import check_cache_pair

#: Most partitions one sequence's context is cut into (the reduce holds them all).
MAX_SPLITS = 64
#: Fewest tokens worth a partition of their own.
MIN_TOKENS_PER_SPLIT = 128
#: Programs per multiprocessor the split heuristic aims for.
PROGRAMS_PER_SM = 2

if checks.HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _dot(a, b, IEEE: tl.constexpr):
        if IEEE:
            return tl.dot(a, b, input_precision="ieee")
        return tl.dot(a, b)

    @triton.jit
    def _split_tokens(seq_len, num_splits, min_split, BLOCK_N: tl.constexpr):
        """Tokens per partition of one sequence: its length over the partitions, in whole
        tiles, at least `min_split` (a multiple of BLOCK_N)."""
        per = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N
        return tl.maximum(per, min_split)

    @triton.jit
    def _paged_decode_attention_kernel(
        q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr,
        out_ptr, part_out_ptr, part_lse_ptr,
        qk_scale,
        stride_qb, stride_qh, stride_ob, stride_oh,
        stride_cb, stride_cs, stride_ch, stride_bt,
        group, head_dim, min_split, num_splits,
        BLOCK_SIZE: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, EVEN_D: tl.constexpr,
        UPCAST: tl.constexpr, IEEE: tl.constexpr,
    ):  # fmt: skip
        b = tl.program_id(0)
        kvh = tl.program_id(1)
        split = tl.program_id(2)
        seq_len = tl.load(seq_lens_ptr + b)
        tokens_per_split = _split_tokens(seq_len, num_splits, min_split, BLOCK_N)
        start = split * tokens_per_split
        if start >= seq_len:
            return
        end = tl.minimum(start + tokens_per_split, seq_len)

        g = tl.arange(0, BLOCK_G)
        d = tl.arange(0, BLOCK_D)
        heads = kvh * group + g
        qmask = (g < group)[:, None] & (d < head_dim)[None, :]
        q = tl.load(
            q_ptr + b * stride_qb + heads[:, None] * stride_qh + d[None, :], mask=qmask, other=0.0
        )
        if UPCAST:
            q = q.to(tl.float32)

        m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
        table = block_tables_ptr + b.to(tl.int64) * stride_bt
        for n0 in range(start, end, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            nmask = n < end
            blk = tl.load(table + n // BLOCK_SIZE, mask=nmask, other=0).to(tl.int64)
            rows = blk * stride_cb + (n % BLOCK_SIZE) * stride_cs + kvh * stride_ch
            if EVEN_D:  # noqa: SIM108 (a Triton constexpr branch)
                kvmask = nmask[:, None]
            else:
                kvmask = nmask[:, None] & (d < head_dim)[None, :]
            k = tl.load(k_cache_ptr + rows[:, None] + d[None, :], mask=kvmask, other=0.0)
            v = tl.load(v_cache_ptr + rows[:, None] + d[None, :], mask=kvmask, other=0.0)
            if UPCAST:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            s = _dot(q, tl.trans(k), IEEE) * qk_scale  # [G, N], log2 domain
            s = tl.where(nmask[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
            m_i = m_new

        acc = acc / l_i[:, None]
        if SPLIT:
            # Partial results: [B, num_heads, num_splits, head_dim] and [B, num_heads, num_splits].
            row = (b * group * tl.num_programs(1) + heads) * num_splits + split
            tl.store(part_out_ptr + row[:, None] * BLOCK_D + d[None, :], acc, mask=qmask)
            tl.store(part_lse_ptr + row, m_i + tl.log2(l_i), mask=g < group)
        else:
            dst = out_ptr + b * stride_ob + heads[:, None] * stride_oh + d[None, :]
            tl.store(dst, acc.to(out_ptr.dtype.element_ty), mask=qmask)

    @triton.jit
    def _paged_decode_reduce_kernel(
        part_out_ptr, part_lse_ptr, seq_lens_ptr, out_ptr,
        stride_ob, stride_oh, num_heads, head_dim, min_split, num_splits,
        BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        b = tl.program_id(0)
        h = tl.program_id(1)
        seq_len = tl.load(seq_lens_ptr + b)
        used = tl.cdiv(seq_len, _split_tokens(seq_len, num_splits, min_split, BLOCK_N))
        s = tl.arange(0, BLOCK_S)
        d = tl.arange(0, BLOCK_D)
        smask = s < used
        row = (b * num_heads + h) * num_splits + s
        lse = tl.load(part_lse_ptr + row, mask=smask, other=float("-inf"))
        w = tl.where(smask, tl.exp2(lse - tl.max(lse, axis=0)), 0.0)
        pmask = smask[:, None] & (d < head_dim)[None, :]
        part = tl.load(part_out_ptr + row[:, None] * BLOCK_D + d[None, :], mask=pmask, other=0.0)
        res = tl.sum(part * w[:, None], axis=0) / tl.sum(w, axis=0)
        tl.store(
            out_ptr + b * stride_ob + h * stride_oh + d,
            res.to(out_ptr.dtype.element_ty),
            mask=d < head_dim,
        )


_SM_COUNT: dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1  # the interpreter: any figure works, splits are tested explicitly
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


def choose_splits(batch: int, num_kv_heads: int, max_context: int, sm_count: int) -> int:
    """Partitions per sequence: enough programs to fill the GPU, each at least
    MIN_TOKENS_PER_SPLIT tokens long. Depends on shapes only."""
    programs = batch * num_kv_heads
    wanted = math.ceil(PROGRAMS_PER_SM * sm_count / max(programs, 1))
    by_length = max(max_context // MIN_TOKENS_PER_SPLIT, 1)
    return max(1, min(wanted, by_length, MAX_SPLITS))


def check_paged(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    block_tables: torch.Tensor, seq_lens: torch.Tensor,
) -> None:  # fmt: skip
    """Checks shared by decode and prefill (q's first dim is theirs to check)."""
    check_cache_pair(k_cache, v_cache)
    checks.check_ndim("q", q, 3, "[tokens, num_heads, head_dim]")
    checks.check_dtype("q", q, checks.FLOAT_DTYPES)
    checks.check_same_dtype(q=q, k_cache=k_cache)
    checks.check_last_contiguous("q", q)
    checks.check_dim("q", q, 2, k_cache.shape[3], "head_dim of the cache")
    if q.shape[1] % k_cache.shape[2]:
        raise checks.KernelInputError(
            f"q: num_heads {q.shape[1]} is not a multiple of num_kv_heads {k_cache.shape[2]}"
        )
    checks.check_ndim("seq_lens", seq_lens, 1, "[batch]")
    checks.check_dtype("seq_lens", seq_lens, checks.INDEX_DTYPES)
    checks.check_ndim("block_tables", block_tables, 2, "[batch, max_blocks]")
    checks.check_dtype("block_tables", block_tables, checks.INDEX_DTYPES)
    checks.check_dim("block_tables", block_tables, 0, seq_lens.shape[0], "batch of seq_lens")
    checks.check_last_contiguous("block_tables", block_tables)
    checks.check_same_device(
        q=q, k_cache=k_cache, v_cache=v_cache, block_tables=block_tables, seq_lens=seq_lens
    )


def paged_decode_attention(
    q: torch.Tensor,  # [B, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    seq_lens: torch.Tensor,  # [B] int32, each >= 1 and <= max_blocks * block_size
    scale: float,
    *,
    out: torch.Tensor | None = None,
    num_splits: int | None = None,
    min_split: int | None = None,
    block_n: int | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
) -> torch.Tensor:  # [B, num_heads, head_dim]
    """Triton launcher; same contract as `paged_decode_attention_ref`. The
    keywords after `out` are tuning knobs (None: the heuristic)."""
    check_paged(q, k_cache, v_cache, block_tables, seq_lens)
    checks.check_dim("seq_lens", seq_lens, 0, q.shape[0], "batch of q")
    batch, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    expected = torch.empty_like(q, memory_format=torch.contiguous_format)
    out = expected if out is None else out
    checks.check_out("out", out, expected)
    if batch == 0:
        return out
    group = num_heads // num_kv_heads
    # tl.dot needs tiles of at least 16 on each side: pad the group and head_dim.
    block_g = max(16, checks.next_power_of_two(group))
    block_d = max(16, checks.next_power_of_two(head_dim))
    block_n = block_n or max(block_size, 64 if block_d <= 128 else 32)
    checks.check_power_of_two("block_n", block_n, 16)
    max_context = block_tables.shape[1] * block_size
    if num_splits is None:
        num_splits = choose_splits(batch, num_kv_heads, max_context, _sm_count(q.device))
    if not 1 <= num_splits <= MAX_SPLITS:
        raise checks.KernelInputError(f"num_splits: {num_splits} not in [1, {MAX_SPLITS}]")
    # Partitions of at least min_split tokens: a longer one is cut at run time (see above).
    min_split = math.ceil((min_split or MIN_TOKENS_PER_SPLIT) / block_n) * block_n
    num_splits = min(num_splits, max(1, math.ceil(max_context / min_split)))
    split = num_splits > 1
    if split:
        part_out = torch.empty(
            (batch, num_heads, num_splits, block_d), dtype=torch.float32, device=q.device
        )
        part_lse = torch.empty((batch, num_heads, num_splits), dtype=torch.float32, device=q.device)
    else:
        part_out = part_lse = out  # unused
    seq_lens = seq_lens.contiguous()
    _paged_decode_attention_kernel[(batch, num_kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, seq_lens, out, part_out, part_lse,
        scale * math.log2(math.e),
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        group, head_dim, min_split, num_splits,
        BLOCK_SIZE=block_size, BLOCK_G=block_g, BLOCK_D=block_d, BLOCK_N=block_n,
        SPLIT=split, EVEN_D=block_d == head_dim,
        # The interpreter's tl.dot is wrong for bfloat16 operands (Triton 3.9): upcast there.
        UPCAST=q.device.type == "cpu" and q.dtype == torch.bfloat16,
        IEEE=q.dtype == torch.float32,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    if split:
        _paged_decode_reduce_kernel[(batch, num_heads)](
            part_out, part_lse, seq_lens, out,
            out.stride(0), out.stride(1), num_heads, head_dim, min_split, num_splits,
            BLOCK_S=checks.next_power_of_two(num_splits), BLOCK_D=block_d, BLOCK_N=block_n,
            num_warps=4,
        )  # fmt: skip
    return out


def paged_decode_attention_ref(
    q: torch.Tensor,  # [B, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    seq_lens: torch.Tensor,  # [B] int32
    scale: float,
) -> torch.Tensor:  # [B, num_heads, head_dim]
    """Plain-PyTorch reference: gathers each sequence's blocks and runs softmax
    attention in float32. GQA: query head h reads KV head h // (num_heads // num_kv_heads)."""
    out = torch.empty_like(q)
    bs = k_cache.shape[1]
    group = q.shape[1] // k_cache.shape[2]
    for b in range(q.shape[0]):
        n = int(seq_lens[b])
        blocks = block_tables[b, : (n + bs - 1) // bs].long()
        k = k_cache[blocks].flatten(0, 1)[:n].float()  # [n, kvh, d]
        v = v_cache[blocks].flatten(0, 1)[:n].float()
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,nhd->hn", q[b].float(), k) * scale
        probs = torch.softmax(scores, dim=-1)
        out[b] = torch.einsum("hn,nhd->hd", probs, v).to(q.dtype)
    return out
