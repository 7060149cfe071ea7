"""Paged prefill attention: causal attention for variable-length query chunks
that also read earlier context (prefix-cache hits, earlier chunks) from the
paged cache.

Query token i of sequence s (query length L_s, context length N_s after this
step) sits at position N_s - L_s + i and attends to positions <= its own.

Algorithm: FlashAttention-2 (Dao, "FlashAttention-2: Faster Attention with
Better Parallelism and Work Partitioning", 2023). One program owns a tile of
BLOCK_M query rows of one sequence and one query head; it streams K and V in
tiles of BLOCK_N positions and keeps a running max, sum and output in float32
(online softmax, base 2). Key tiles that lie wholly at or before the tile's
first query position need no mask and run in a loop of their own; only the
tiles that cross the diagonal pay for the causal mask. Programs take the
heaviest query tiles (last in the sequence, most keys) first so the tail of
the grid is short.

Where K and V come from:
- Paged (default): every position is gathered through the block table
  (PagedAttention, Kwon et al., SOSP 2023).
- Split (`k_new`/`v_new` given): the chunk's own positions are read from the
  contiguous K/V rows this step just computed and stored, and only the earlier
  context from the paged cache. Contiguous rows can be fetched by the Hopper
  tensor-memory accelerator (TMA: one descriptor load per tile, no address
  arithmetic in the threads), which the 16-row cache blocks do not allow; this
  is the usual split of an "extend" step into cached prefix and new tokens.
"""

from __future__ import annotations

import math

import torch

from tandem.kernels import checks
from tandem.kernels import prefill_attention_hopper as hopper_kernel
from tandem.kernels.paged_decode_attention import check_paged

if checks.HAS_TRITON:
    import triton
    import triton.language as tl

    try:  # host-side TMA descriptors (Triton >= 3.4)
        from triton.tools.tensor_descriptor import TensorDescriptor
    except ImportError:  # pragma: no cover - older Triton: the pointer paths only
        TensorDescriptor = None

    @triton.jit
    def _dot_acc(a, b, acc, IEEE: tl.constexpr):
        if IEEE:
            return tl.dot(a, b, acc, input_precision="ieee")
        return tl.dot(a, b, acc)

    @triton.jit
    def _softmax_step(s, v, acc, m_i, l_i, qk_scale, IEEE: tl.constexpr):
        """One online-softmax update with the scores `s` of a K tile and its V tile."""
        m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)
        alpha = tl.exp2(m_i - m_new)
        # The softmax scale (in log2 units) is folded into one FMA per score.
        p = tl.exp2(s * qk_scale - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = _dot_acc(p.to(v.dtype), v, acc * alpha[:, None], IEEE)
        return acc, m_new, l_i

    @triton.jit
    def _load_paged(
        cache_ptr, table, kv_off, d, n, hi, head_dim, stride_cb, stride_cs,
        BLOCK_SIZE: tl.constexpr, MASKED: tl.constexpr, EVEN_D: tl.constexpr,
    ):  # fmt: skip
        """A [BLOCK_N, BLOCK_D] tile of positions `n` gathered through the block table."""
        if MASKED:
            nmask = n < hi
            blk = tl.load(table + n // BLOCK_SIZE, mask=nmask, other=0).to(tl.int64)
        else:
            blk = tl.load(table + n // BLOCK_SIZE).to(tl.int64)
        ptrs = (
            cache_ptr
            + (blk * stride_cb + (n % BLOCK_SIZE) * stride_cs + kv_off)[:, None]
            + d[None, :]
        )
        if MASKED:
            if EVEN_D:
                return tl.load(ptrs, mask=nmask[:, None], other=0.0)
            return tl.load(ptrs, mask=nmask[:, None] & (d < head_dim)[None, :], other=0.0)
        if EVEN_D:
            return tl.load(ptrs)
        return tl.load(ptrs, mask=(d < head_dim)[None, :], other=0.0)

    @triton.jit
    def _load_new(
        new_ptr, desc, row0, j0, hi, kv_off, head_dim, stride_nt,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        MASKED: tl.constexpr, EVEN_D: tl.constexpr, TMA: tl.constexpr,
    ):  # fmt: skip
        """A tile of this chunk's own K or V rows: relative positions j0 ..
        j0 + BLOCK_N, token rows row0 + j of the contiguous new K/V. TMA fills
        rows past the tensor with zeros, and rows of a following sequence are
        masked out by causality, so only the pointer path needs a bound."""
        if TMA:
            return desc.load([row0 + j0, kv_off])
        j = j0 + tl.arange(0, BLOCK_N)
        d = tl.arange(0, BLOCK_D)
        ptrs = new_ptr + ((row0 + j).to(tl.int64) * stride_nt + kv_off)[:, None] + d[None, :]
        if MASKED:
            if EVEN_D:
                return tl.load(ptrs, mask=(j < hi)[:, None], other=0.0)
            return tl.load(ptrs, mask=(j < hi)[:, None] & (d < head_dim)[None, :], other=0.0)
        if EVEN_D:
            return tl.load(ptrs)
        return tl.load(ptrs, mask=(d < head_dim)[None, :], other=0.0)

    @triton.jit
    def _scores(q, k, n, hi, qpos, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                MASKED: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr):  # fmt: skip
        """q k^T for a tile; masked tiles hide keys past `hi` and past each row's position."""
        if UPCAST:
            k = k.to(tl.float32)
        s = _dot_acc(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), IEEE)
        if MASKED:
            s = tl.where((n[None, :] <= qpos[:, None]) & (n < hi)[None, :], s, float("-inf"))
        return s

    @triton.jit
    def _attend(q, k, v, acc, m_i, l_i, n, hi, qpos, qk_scale,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
                UPCAST: tl.constexpr, IEEE: tl.constexpr):  # fmt: skip
        """Scores of one loaded K tile, then the softmax update with its V tile."""
        s = _scores(q, k, n, hi, qpos, BLOCK_M, BLOCK_N, MASKED, UPCAST, IEEE)
        if UPCAST:
            v = v.to(tl.float32)
        return _softmax_step(s, v, acc, m_i, l_i, qk_scale, IEEE)

    @triton.jit
    def _paged_prefill_attention_kernel(
        q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, query_start_ptr, seq_lens_ptr, out_ptr,
        k_new_ptr, v_new_ptr, k_desc, v_desc,
        qk_scale,
        stride_qt, stride_qh, stride_ot, stride_oh,
        stride_cb, stride_cs, stride_ch, stride_bt, stride_nt, stride_nh, stride_vt, stride_vh,
        group, head_dim,
        BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr, GROUP_TILE: tl.constexpr, EVEN_D: tl.constexpr,
        UPCAST: tl.constexpr, IEEE: tl.constexpr,
        SPLIT: tl.constexpr, TMA: tl.constexpr,
    ):  # fmt: skip
        # Row r of the tile is query token r // GROUP_TILE of the tile and, when
        # GQA is packed (GROUP_TILE > 1), query head r % GROUP_TILE of the group.
        TOK_M: tl.constexpr = BLOCK_M // GROUP_TILE
        # The query tile is the slowest grid axis, counted down: the heaviest
        # tiles (most keys) of every head launch first and light ones fill the tail.
        m_tile = tl.num_programs(2) - 1 - tl.program_id(2)
        b = tl.program_id(1)
        q_start = tl.load(query_start_ptr + b)
        q_len = tl.load(query_start_ptr + b + 1) - q_start
        if m_tile * TOK_M >= q_len:
            return
        seq_len = tl.load(seq_lens_ptr + b)
        ctx_len = seq_len - q_len  # positions cached before this chunk
        first_pos = ctx_len + m_tile * TOK_M  # position of the tile's first query

        r = tl.arange(0, BLOCK_M)
        if GROUP_TILE == 1:
            kvh = tl.program_id(0) // group
            head = tl.program_id(0) + r * 0
            row_ok = m_tile * TOK_M + r < q_len
        else:
            kvh = tl.program_id(0)
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
        # Paged positions [0, paged_hi): everything when not split, else the context.
        if SPLIT:
            paged_hi = ctx_len
            full_end = ctx_len // BLOCK_N * BLOCK_N
        else:
            paged_hi = tl.minimum(seq_len, first_pos + TOK_M)
            # Keys [0, full_end) are visible to every row of the tile: no mask.
            full_end = (first_pos + 1) // BLOCK_N * BLOCK_N
        for n0 in range(0, full_end, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            k = _load_paged(k_cache_ptr, table, kv_off, d, n, seq_len, head_dim, stride_cb, stride_cs,
                            BLOCK_SIZE, False, EVEN_D)  # fmt: skip
            v = _load_paged(v_cache_ptr, table, kv_off, d, n, seq_len, head_dim, stride_cb, stride_cs,
                            BLOCK_SIZE, False, EVEN_D)  # fmt: skip
            acc, m_i, l_i = _attend(q, k, v, acc, m_i, l_i, n, seq_len, qpos, qk_scale,
                                    BLOCK_M, BLOCK_N, False, UPCAST, IEEE)  # fmt: skip
        for n0 in range(full_end, paged_hi, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            k = _load_paged(k_cache_ptr, table, kv_off, d, n, paged_hi, head_dim, stride_cb, stride_cs,
                            BLOCK_SIZE, True, EVEN_D)  # fmt: skip
            v = _load_paged(v_cache_ptr, table, kv_off, d, n, paged_hi, head_dim, stride_cb, stride_cs,
                            BLOCK_SIZE, True, EVEN_D)  # fmt: skip
            acc, m_i, l_i = _attend(q, k, v, acc, m_i, l_i, n, paged_hi, qpos, qk_scale,
                                    BLOCK_M, BLOCK_N, True, UPCAST, IEEE)  # fmt: skip

        if SPLIT:
            # This chunk's own keys, relative position j = position - ctx_len.
            rel = m_tile * TOK_M
            qrel = rel + r // GROUP_TILE
            # k_new and v_new may have different layouts (QK norm gives k a copy of its
            # own while v stays a view into the projection output): strides of each.
            new_off = kvh * stride_nh
            v_off = kvh * stride_vh
            full_new = (rel + 1) // BLOCK_N * BLOCK_N
            for j0 in range(0, full_new, BLOCK_N):
                j = j0 + tl.arange(0, BLOCK_N)
                k = _load_new(k_new_ptr, k_desc, q_start, j0, q_len, new_off, head_dim, stride_nt,
                              BLOCK_N, BLOCK_D, False, EVEN_D, TMA)  # fmt: skip
                v = _load_new(v_new_ptr, v_desc, q_start, j0, q_len, v_off, head_dim, stride_vt,
                              BLOCK_N, BLOCK_D, False, EVEN_D, TMA)  # fmt: skip
                acc, m_i, l_i = _attend(q, k, v, acc, m_i, l_i, j, q_len, qrel, qk_scale,
                                        BLOCK_M, BLOCK_N, False, UPCAST, IEEE)  # fmt: skip
            new_hi = tl.minimum(q_len, rel + TOK_M)
            for j0 in range(full_new, new_hi, BLOCK_N):
                j = j0 + tl.arange(0, BLOCK_N)
                k = _load_new(k_new_ptr, k_desc, q_start, j0, new_hi, new_off, head_dim, stride_nt,
                              BLOCK_N, BLOCK_D, True, EVEN_D, TMA)  # fmt: skip
                v = _load_new(v_new_ptr, v_desc, q_start, j0, new_hi, v_off, head_dim, stride_vt,
                              BLOCK_N, BLOCK_D, True, EVEN_D, TMA)  # fmt: skip
                acc, m_i, l_i = _attend(q, k, v, acc, m_i, l_i, j, new_hi, qrel, qk_scale,
                                        BLOCK_M, BLOCK_N, True, UPCAST, IEEE)  # fmt: skip

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


def _tma_ok(t: torch.Tensor, head_dim: int) -> bool:
    """Whether `t` ([T, kv_heads, head_dim]) can back a 2-D TMA descriptor
    [T, kv_heads * head_dim]: heads packed in a row, 16-byte aligned base and rows."""
    es = t.element_size()
    return (
        TensorDescriptor is not None
        and t.stride(2) == 1
        and t.stride(1) == head_dim
        and (t.stride(0) * es) % 16 == 0
        and t.data_ptr() % 16 == 0
        and (head_dim * es) % 16 == 0
    )


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
    k_new: torch.Tensor | None = None,  # [T, num_kv_heads, head_dim]
    v_new: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    pack_gqa: bool | None = None,
    tma: bool | None = None,
    hopper: bool | None = None,
) -> torch.Tensor:  # [T, num_heads, head_dim]
    """Triton launcher; same contract as `paged_prefill_attention_ref`.

    `max_query_len` bounds every sequence's query length (it sizes the grid,
    so no host sync is needed). `k_new`/`v_new`, when given, hold this step's
    K and V rows (rotated K) in the order of `q`; they must equal what the
    step stored in the cache, and the kernel reads the chunk's own positions
    from them instead of gathering through the block table. The keywords after
    `out` are tuning knobs (None: the measured defaults): tile sizes, `pack_gqa`
    (the query heads of one KV head share the rows of a tile, so each K/V tile
    is loaded once per group), `tma` (load `k_new`/`v_new` tiles with TMA
    descriptors), `hopper` (run the split path with the warp-specialized Gluon
    kernel of `prefill_attention_hopper`; None: whenever it supports the inputs,
    which needs an sm_90 GPU; block_n, num_stages and pack_gqa then apply to it)."""
    check_paged(q, k_cache, v_cache, block_tables, seq_lens)
    batch = seq_lens.shape[0]
    checks.check_ndim("query_start_loc", query_start_loc, 1, "[batch + 1]")
    checks.check_dtype("query_start_loc", query_start_loc, checks.INDEX_DTYPES)
    checks.check_dim("query_start_loc", query_start_loc, 0, batch + 1, "batch + 1")
    checks.check_same_device(q=q, query_start_loc=query_start_loc)
    num_tokens, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    split = _check_new(q, k_cache, k_new, v_new)
    expected = torch.empty_like(q, memory_format=torch.contiguous_format)
    out = expected if out is None else out
    checks.check_out("out", out, expected)
    if num_tokens == 0 or batch == 0 or max_query_len <= 0:
        return out
    if split:
        assert k_new is not None and v_new is not None
        # block_m and num_warps are knobs of the Triton kernel only: setting them picks it.
        can_hopper = (
            tma is not False
            and block_m is None
            and num_warps is None
            and hopper_kernel.supported(q, k_cache, v_cache, k_new, v_new)
        )
        if hopper and not can_hopper:
            raise checks.KernelInputError(
                "hopper needs an sm_90 GPU, 16-bit q, head_dim 64 or 128, a power-of-two GQA group "
                "of at most 8, TMA-compatible k_new/v_new and caches, and no block_m/num_warps/tma=False"
            )
        if can_hopper if hopper is None else hopper:
            ht = hopper_kernel.DEFAULT_TILES
            return hopper_kernel.prefill_attention_hopper(
                q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale,
                max_query_len=max_query_len, k_new=k_new, v_new=v_new, out=out,
                block_n=block_n or ht[0], stages=num_stages or ht[1], pack_gqa=pack_gqa,
            )  # fmt: skip
    elif hopper:
        raise checks.KernelInputError("hopper needs k_new and v_new (the split path)")
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
        raise checks.KernelInputError(
            f"block_m {block_m} must exceed the packed group {group_tile}"
        )
    tok_m = block_m // group_tile
    k_desc = v_desc = None
    if split:
        assert k_new is not None and v_new is not None
        can_tma = block_d == head_dim and _tma_ok(k_new, head_dim) and _tma_ok(v_new, head_dim)
        if tma and not can_tma:
            raise checks.KernelInputError(
                "tma needs k_new/v_new rows of packed heads, 16-byte aligned, and a power-of-two head_dim"
            )
        tma = can_tma if tma is None else tma
        if tma:
            width = num_kv_heads * head_dim
            k_desc = TensorDescriptor(
                k_new, [num_tokens, width], [k_new.stride(0), 1], [block_n, head_dim]
            )
            v_desc = TensorDescriptor(
                v_new, [num_tokens, width], [v_new.stride(0), 1], [block_n, head_dim]
            )
    else:
        tma = False
    k_src = k_new if k_new is not None else k_cache
    v_src = v_new if v_new is not None else v_cache
    grid = (num_kv_heads if group_tile > 1 else num_heads, batch, math.ceil(max_query_len / tok_m))
    _paged_prefill_attention_kernel[grid](
        q, k_cache, v_cache, block_tables, query_start_loc.contiguous(), seq_lens.contiguous(), out,
        k_src, v_src, k_desc, v_desc,
        scale * math.log2(math.e),
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        k_src.stride(0), k_src.stride(1), v_src.stride(0), v_src.stride(1),
        group, head_dim,
        BLOCK_SIZE=block_size, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        GROUP_TILE=group_tile, EVEN_D=block_d == head_dim,
        # The interpreter's tl.dot is wrong for bfloat16 operands (Triton 3.9): upcast there.
        UPCAST=not on_gpu and q.dtype == torch.bfloat16,
        IEEE=q.dtype == torch.float32,
        SPLIT=split, TMA=bool(tma),
        num_warps=num_warps or tiles[2], num_stages=num_stages or tiles[3],
    )  # fmt: skip
    return out


def _check_new(
    q: torch.Tensor, k_cache: torch.Tensor, k_new: torch.Tensor | None, v_new: torch.Tensor | None
) -> bool:
    """Validate the optional contiguous new K/V; True when both are given."""
    if k_new is None and v_new is None:
        return False
    if k_new is None or v_new is None:
        raise checks.KernelInputError("k_new and v_new must be given together")
    for name, t in (("k_new", k_new), ("v_new", v_new)):
        checks.check_ndim(name, t, 3, "[num_tokens, num_kv_heads, head_dim]")
        checks.check_dim(name, t, 0, q.shape[0], "tokens of q")
        checks.check_dim(name, t, 1, k_cache.shape[2], "num_kv_heads of the cache")
        checks.check_dim(name, t, 2, q.shape[2], "head_dim of q")
        checks.check_last_contiguous(name, t)
    checks.check_same_dtype(q=q, k_new=k_new, v_new=v_new)
    checks.check_same_device(q=q, k_new=k_new, v_new=v_new)
    return True


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
