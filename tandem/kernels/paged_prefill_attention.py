"""Paged prefill attention: causal attention for variable-length query chunks
that also read earlier context (prefix-cache hits, earlier chunks) from the
paged cache.

Query token i of sequence s (query length L_s, context length N_s after this
step) sits at position N_s - L_s + i and attends to positions <= its own.

Algorithm: FlashAttention-2 (Dao, "FlashAttention-2: Faster Attention with
Better Parallelism and Work Partitioning", 2023). One program owns a tile of
BLOCK_M query rows of one sequence and one query head; it streams K and V in
tiles of BLOCK_N positions gathered through the block table (PagedAttention,
Kwon et al., SOSP 2023) and keeps a running max, sum and output in float32
(online softmax, base 2). Key tiles that lie wholly at or before the tile's
first query position need no mask and run in a first loop; only the tiles
that cross the diagonal pay for the causal mask. Programs take the heaviest
query tiles (last in the sequence, most keys) first so the tail of the grid
is short.
"""

from __future__ import annotations

import math

import torch

from tandem.kernels import checks
from tandem.kernels.paged_decode_attention import check_paged

if checks.HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _dot_acc(a, b, acc, IEEE: tl.constexpr):
        if IEEE:
            return tl.dot(a, b, acc, input_precision="ieee")
        return tl.dot(a, b, acc)

    @triton.jit
    def _attend_tile(
        q, acc, m_i, l_i, k_cache_ptr, v_cache_ptr, table, kv_off, d, n0, hi, qpos, qk_scale,
        head_dim, stride_cb, stride_cs,
        BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        MASKED: tl.constexpr, EVEN_D: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
    ):  # fmt: skip
        n = n0 + tl.arange(0, BLOCK_N)
        if MASKED:
            nmask = n < hi
            blk = tl.load(table + n // BLOCK_SIZE, mask=nmask, other=0).to(tl.int64)
        else:
            blk = tl.load(table + n // BLOCK_SIZE).to(tl.int64)
        rows = blk * stride_cb + (n % BLOCK_SIZE) * stride_cs + kv_off
        ptrs = rows[:, None] + d[None, :]
        if MASKED:
            if EVEN_D:
                k = tl.load(k_cache_ptr + ptrs, mask=nmask[:, None], other=0.0)
                v = tl.load(v_cache_ptr + ptrs, mask=nmask[:, None], other=0.0)
            else:
                kvmask = nmask[:, None] & (d < head_dim)[None, :]
                k = tl.load(k_cache_ptr + ptrs, mask=kvmask, other=0.0)
                v = tl.load(v_cache_ptr + ptrs, mask=kvmask, other=0.0)
        elif EVEN_D:
            k = tl.load(k_cache_ptr + ptrs)
            v = tl.load(v_cache_ptr + ptrs)
        else:
            k = tl.load(k_cache_ptr + ptrs, mask=(d < head_dim)[None, :], other=0.0)
            v = tl.load(v_cache_ptr + ptrs, mask=(d < head_dim)[None, :], other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = _dot_acc(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), IEEE)
        if MASKED:
            s = tl.where((n[None, :] <= qpos[:, None]) & (n < hi)[None, :], s, float("-inf"))
        # The softmax scale (in log2 units) is folded into one FMA per score.
        m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s * qk_scale - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = _dot_acc(p.to(v.dtype), v, acc * alpha[:, None], IEEE)
        return acc, m_new, l_i

    @triton.jit
    def _paged_prefill_attention_kernel(
        q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, query_start_ptr, seq_lens_ptr, out_ptr,
        qk_scale,
        stride_qt, stride_qh, stride_ot, stride_oh,
        stride_cb, stride_cs, stride_ch, stride_bt,
        group, head_dim,
        BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr, GROUP_TILE: tl.constexpr, EVEN_D: tl.constexpr,
        UPCAST: tl.constexpr, IEEE: tl.constexpr,
    ):  # fmt: skip
        # Row r of the tile is query token r // GROUP_TILE of the tile and, when
        # GQA is packed (GROUP_TILE > 1), query head r % GROUP_TILE of the group.
        TOK_M: tl.constexpr = BLOCK_M // GROUP_TILE
        m_tile = tl.num_programs(0) - 1 - tl.program_id(0)  # heaviest tiles first
        b = tl.program_id(1)
        q_start = tl.load(query_start_ptr + b)
        q_len = tl.load(query_start_ptr + b + 1) - q_start
        if m_tile * TOK_M >= q_len:
            return
        seq_len = tl.load(seq_lens_ptr + b)
        first_pos = seq_len - q_len + m_tile * TOK_M  # position of the tile's first query

        r = tl.arange(0, BLOCK_M)
        if GROUP_TILE == 1:
            kvh = tl.program_id(2) // group
            head = tl.program_id(2) + r * 0
            row_ok = m_tile * TOK_M + r < q_len
        else:
            kvh = tl.program_id(2)
            head = kvh * group + r % GROUP_TILE
            row_ok = (m_tile * TOK_M + r // GROUP_TILE < q_len) & (r % GROUP_TILE < group)
        d = tl.arange(0, BLOCK_D)
        qmask = row_ok[:, None] & (d < head_dim)[None, :]
        tok = (q_start + m_tile * TOK_M + r // GROUP_TILE).to(tl.int64)
        q_off = tok[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :]
        q = tl.load(q_ptr + q_off, mask=qmask, other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
        qpos = first_pos + r // GROUP_TILE

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        table = block_tables_ptr + b.to(tl.int64) * stride_bt
        kv_off = kvh * stride_ch
        # Keys [0, full_end) are visible to every row of the tile: no mask.
        full_end = (first_pos + 1) // BLOCK_N * BLOCK_N
        for n0 in range(0, full_end, BLOCK_N):
            acc, m_i, l_i = _attend_tile(
                q, acc, m_i, l_i, k_cache_ptr, v_cache_ptr, table, kv_off, d, n0, seq_len, qpos,
                qk_scale, head_dim, stride_cb, stride_cs,
                BLOCK_SIZE, BLOCK_M, BLOCK_N, False, EVEN_D, UPCAST, IEEE,
            )  # fmt: skip
        hi = tl.minimum(seq_len, first_pos + TOK_M)
        for n0 in range(full_end, hi, BLOCK_N):
            acc, m_i, l_i = _attend_tile(
                q, acc, m_i, l_i, k_cache_ptr, v_cache_ptr, table, kv_off, d, n0, hi, qpos,
                qk_scale, head_dim, stride_cb, stride_cs,
                BLOCK_SIZE, BLOCK_M, BLOCK_N, True, EVEN_D, UPCAST, IEEE,
            )  # fmt: skip

        acc = acc / l_i[:, None]
        o_off = tok[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :]
        tl.store(out_ptr + o_off, acc.to(out_ptr.dtype.element_ty), mask=qmask)


def default_tiles(head_dim: int, elem_bytes: int, on_gpu: bool) -> tuple[int, int, int, int]:
    """(block_m, block_n, num_warps, num_stages) for this head size and dtype.

    Measured on an H100 (bench/NOTES-kernels.md): 128 x 128 tiles, 8 warps and
    3 stages for 16-bit head_dim 128. The K/V pipeline stages must fit in 227 KB
    of shared memory and the tiles in registers, so wider heads take smaller tiles
    (sizes checked by compiling for sm_90)."""
    if not on_gpu:
        return 16, 16, 4, 1
    if elem_bytes > 2:
        # float32 runs its dots as exact FMAs (input_precision="ieee"), not on the
        # tensor cores: small tiles keep it out of local memory. Not a fast path.
        return 32, 32, 4, 2
    if head_dim <= 64:
        return 128, 64, 4, 3
    if head_dim <= 128:
        return 128, 128, 8, 3
    return 64, 32, 4, 2


def paged_prefill_attention(
    q: torch.Tensor,  # [T, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    query_start_loc: torch.Tensor,  # [B + 1] int32
    seq_lens: torch.Tensor,  # [B] int32
    scale: float,
    *,
    max_query_len: int,
    out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    pack_gqa: bool | None = None,
) -> torch.Tensor:  # [T, num_heads, head_dim]
    """Triton launcher; same contract as `paged_prefill_attention_ref`.
    `max_query_len` bounds every sequence's query length (it sizes the grid,
    so no host sync is needed); the keywords after `out` are tuning knobs
    (None: the measured defaults; `pack_gqa` puts the query heads of one KV
    head into the rows of one tile so each K/V tile is loaded once per group)."""
    check_paged(q, k_cache, v_cache, block_tables, seq_lens)
    batch = seq_lens.shape[0]
    checks.check_ndim("query_start_loc", query_start_loc, 1, "[batch + 1]")
    checks.check_dtype("query_start_loc", query_start_loc, checks.INDEX_DTYPES)
    checks.check_dim("query_start_loc", query_start_loc, 0, batch + 1, "batch + 1")
    checks.check_same_device(q=q, query_start_loc=query_start_loc)
    num_tokens, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    expected = torch.empty_like(q, memory_format=torch.contiguous_format)
    out = expected if out is None else out
    checks.check_out("out", out, expected)
    if num_tokens == 0 or batch == 0 or max_query_len <= 0:
        return out
    on_gpu = q.is_cuda
    tiles = default_tiles(head_dim, q.element_size(), on_gpu)
    block_m = block_m or tiles[0]
    block_n = block_n or tiles[1]
    checks.check_power_of_two("block_m", block_m, 16)
    checks.check_power_of_two("block_n", block_n, 16)
    block_d = max(16, checks.next_power_of_two(head_dim))
    group = num_heads // num_kv_heads
    # Packing the GQA group into the rows of one tile reads each K/V tile once per group.
    if pack_gqa is None:  # measured faster on the H100 for Llama-3-8B's group of 4
        pack_gqa = on_gpu and 1 < group <= block_m // 16
    group_tile = checks.next_power_of_two(group) if pack_gqa and group > 1 else 1
    if group_tile >= block_m:
        raise checks.KernelInputError(f"block_m {block_m} must exceed the packed group {group_tile}")
    tok_m = block_m // group_tile
    grid = (math.ceil(max_query_len / tok_m), batch, num_kv_heads if group_tile > 1 else num_heads)
    _paged_prefill_attention_kernel[grid](
        q, k_cache, v_cache, block_tables, query_start_loc.contiguous(), seq_lens.contiguous(), out,
        scale * math.log2(math.e),
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        group, head_dim,
        BLOCK_SIZE=block_size, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        GROUP_TILE=group_tile, EVEN_D=block_d == head_dim,
        # The interpreter's tl.dot is wrong for bfloat16 operands (Triton 3.9): upcast there.
        UPCAST=not on_gpu and q.dtype == torch.bfloat16,
        IEEE=q.dtype == torch.float32,
        num_warps=num_warps or tiles[2], num_stages=num_stages or tiles[3],
    )  # fmt: skip
    return out


def paged_prefill_attention_ref(
    q: torch.Tensor,  # [T, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    query_start_loc: torch.Tensor,  # [B + 1] int32
    seq_lens: torch.Tensor,  # [B] int32
    scale: float,
) -> torch.Tensor:  # [T, num_heads, head_dim]
    """Plain-PyTorch reference: per sequence, gather the context, mask causally
    by position and run softmax attention in float32."""
    out = torch.empty_like(q)
    bs = k_cache.shape[1]
    group = q.shape[1] // k_cache.shape[2]
    starts = query_start_loc.tolist()
    for b in range(len(starts) - 1):
        q0, q1 = starts[b], starts[b + 1]
        if q1 == q0:
            continue
        n = int(seq_lens[b])
        blocks = block_tables[b, : (n + bs - 1) // bs].long()
        k = k_cache[blocks].flatten(0, 1)[:n].float().repeat_interleave(group, dim=1)
        v = v_cache[blocks].flatten(0, 1)[:n].float().repeat_interleave(group, dim=1)
        qs = q[q0:q1].float()  # [L, h, d]
        scores = torch.einsum("lhd,nhd->hln", qs, k) * scale
        qpos = torch.arange(n - (q1 - q0), n, device=q.device)
        kpos = torch.arange(n, device=q.device)
        scores.masked_fill_(kpos[None, None, :] > qpos[None, :, None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[q0:q1] = torch.einsum("hln,nhd->lhd", probs, v).to(q.dtype)
    return out
