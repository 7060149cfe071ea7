"""Prefill attention for Hopper GPUs (sm_90), written in Gluon, Triton's
explicit-layout dialect.

Same contract as `paged_prefill_attention` with `k_new`/`v_new` given (the
split path): the chunk's own K/V rows come from contiguous tensors through TMA,
earlier context from the paged cache. Reference: `paged_prefill_attention_ref`.

Why a second kernel: the portable Triton kernel cannot keep the tensor cores
busy during the softmax. Triton 3.6 waits for every wgmma group right after it
is issued, so the exponentials of one key tile and the matrix products of the
next never overlap (bench/NOTES-kernels.md). Gluon exposes the asynchronous
wgmma and its wait, so this kernel runs the loop of FlashAttention-3 (Shah et
al., "FlashAttention-3: Fast and Accurate Attention with Asynchrony and
Low-precision", 2024, intra-warpgroup pipelining):

    issue S_j = Q K_j^T                 (async)
    issue O  += P_{j-1} V_{j-1}         (async)
    wait for S_j; softmax of S_j -> P_j (the tensor cores still run P V)
    wait for P V; rescale O

K and V tiles arrive by TMA into a ring of STAGES shared-memory slots, each
with its own mbarrier; a slot is refilled as soon as every warp has finished
the product that read it. Programs take the heaviest query tiles first, and
the query heads of one KV head share a tile (packed GQA), as in the Triton
kernel. Earlier context (prefix-cache hits, earlier chunks, decode rows of a
mixed step) is gathered through the block table into the first slot with
ordinary loads and synchronous products; it is not the hot path of a prefill.
"""

from __future__ import annotations

import math

import torch

from tandem.kernels import checks

try:  # Gluon's Hopper API (Triton >= 3.5); without it the Triton kernel serves every GPU
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor

    HAS_GLUON = checks.HAS_TRITON
    # Names that changed after Triton 3.6: the CTA-wide barrier (`thread_barrier`
    # -> `barrier`) and the TMA load (`async_copy_global_to_shared` -> `async_load`).
    _cta_barrier = getattr(gl, "barrier", None) or gl.thread_barrier
    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
except ImportError:  # pragma: no cover - CPU-only installs, older Triton
    HAS_GLUON = False

if HAS_GLUON:

    @gluon.jit
    def _softmax_step(s, m_i, l_i, qk_scale):
        """Online softmax over one tile of scores (base 2, scale folded into one FMA)."""
        m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
        alpha = gl.exp2(m_i - m_new)
        p = gl.exp2(s * qk_scale - m_new[:, None])
        l_i = l_i * alpha + gl.sum(p, axis=1)
        return p, m_new, l_i, alpha

    @gluon.jit
    def _issue_group(k_desc, v_desc, bar, k_dst, v_dst, row, col, pred):
        """TMA loads of K rows [row, row + BLOCK_N) and of the V tile before them."""
        mbarrier.expect(bar, k_desc.block_type.nbytes + v_desc.block_type.nbytes, pred=pred)
        _tma_load(k_desc, [row, col], bar, k_dst, pred=pred)
        _tma_load(v_desc, [row - k_desc.block_type.shape[0], col], bar, v_dst, pred=pred)

    @gluon.jit
    def _prefill_attention_hopper_kernel(
        q_ptr, out_ptr, k_desc, v_desc, k_cache_ptr, v_cache_ptr, block_tables_ptr,
        query_start_ptr, seq_lens_ptr, qk_scale,
        stride_qt, stride_qh, stride_ot, stride_oh,
        stride_cb, stride_cs, stride_ch, stride_bt,
        group,
        BLOCK_SIZE: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
        HEAD_D: gl.constexpr, GROUP_TILE: gl.constexpr, STAGES: gl.constexpr,
        Q_REGS: gl.constexpr, num_warps: gl.constexpr,
    ):  # fmt: skip
        TOK_M: gl.constexpr = BLOCK_M // GROUP_TILE
        dtype: gl.constexpr = q_ptr.dtype.element_ty
        # Scores and output live in wgmma accumulator layouts; P feeds the
        # second product from registers.
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BLOCK_N, 16]
        )
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, HEAD_D, 16]
        )
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        # Row-major global loads and stores: 16 bytes per thread, a warp covers whole rows.
        io_layout: gl.constexpr = gl.BlockedLayout(
            [1, 8], [32 // (HEAD_D // 8), HEAD_D // 8], [num_warps, 1], [1, 0]
        )
        row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)

        # The query tile is the slowest grid axis, counted down: the heaviest
        # tiles (most keys) of every head launch first and light ones fill the tail.
        m_tile = gl.num_programs(2) - 1 - gl.program_id(2)
        b = gl.program_id(1)
        q_start = gl.load(query_start_ptr + b)
        q_len = gl.load(query_start_ptr + b + 1) - q_start
        if m_tile * TOK_M >= q_len:
            return
        ctx_len = gl.load(seq_lens_ptr + b) - q_len
        rel = m_tile * TOK_M  # chunk-relative position of the tile's first query
        # Packed GQA: axis 2 is the KV head; otherwise the query head.
        kvh = gl.program_id(0) // group if GROUP_TILE == 1 else gl.program_id(0)

        # Q tile -> shared memory (operand A of every q k^T).
        r_io = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, io_layout))
        d_io = gl.arange(0, HEAD_D, layout=gl.SliceLayout(0, io_layout))
        if GROUP_TILE == 1:
            head_io = gl.program_id(0) + r_io * 0
            row_ok = rel + r_io < q_len
        else:
            head_io = kvh * group + r_io % GROUP_TILE
            row_ok = (rel + r_io // GROUP_TILE < q_len) & (r_io % GROUP_TILE < group)
        tok_io = (q_start + rel + r_io // GROUP_TILE).to(gl.int64)
        io_mask = row_ok[:, None] & (d_io < HEAD_D)[None, :]
        q_off = tok_io[:, None] * stride_qt + head_io[:, None] * stride_qh + d_io[None, :]
        q = gl.load(q_ptr + q_off, mask=io_mask, other=0.0)
        if Q_REGS:  # operand A from registers: q k^T then reads only K from shared memory
            q_op = gl.convert_layout(
                q, gl.DotOperandLayout(operand_index=0, parent=s_layout, k_width=2)
            )
        else:
            q_op = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD_D], k_desc.layout, q)

        k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_D], k_desc.layout)
        v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_D], v_desc.layout)
        bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(bars.index(i), count=1)
        fence_async_shared()  # Q and the barriers become visible to TMA and wgmma

        s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
        m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, row_s)
        l_i = gl.zeros([BLOCK_M], gl.float32, row_s)
        o = gl.zeros([BLOCK_M, HEAD_D], gl.float32, o_layout)
        qrel = rel + gl.arange(0, BLOCK_M, layout=row_s) // GROUP_TILE
        cols = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))

        # Earlier context, gathered through the block table (every row sees all of it).
        table = block_tables_ptr + b.to(gl.int64) * stride_bt
        n_io = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, io_layout))
        for t in range(gl.cdiv(ctx_len, BLOCK_N)):
            n = t * BLOCK_N + n_io
            nmask = n < ctx_len
            blk = gl.load(table + n // BLOCK_SIZE, mask=nmask, other=0).to(gl.int64)
            c_off = (blk * stride_cb + (n % BLOCK_SIZE) * stride_cs + kvh * stride_ch)[
                :, None
            ] + d_io[None, :]
            c_mask = nmask[:, None] & (d_io < HEAD_D)[None, :]
            kt = gl.load(k_cache_ptr + c_off, mask=c_mask, other=0.0)
            vt = gl.load(v_cache_ptr + c_off, mask=c_mask, other=0.0)
            _cta_barrier()  # every warpgroup is done with the previous tile
            k_smem.index(0).store(kt)
            v_smem.index(0).store(vt)
            fence_async_shared()
            _cta_barrier()
            s = warpgroup_mma(q_op, k_smem.index(0).permute((1, 0)), s_zero, use_acc=False)
            s = gl.where((t * BLOCK_N + cols < ctx_len)[None, :], s, float("-inf"))
            p, m_i, l_i, alpha = _softmax_step(s, m_i, l_i, qk_scale)
            o = o * gl.convert_layout(alpha, row_o)[:, None]
            o = warpgroup_mma(gl.convert_layout(p.to(dtype), p_layout), v_smem.index(0), o)
        _cta_barrier()

        # The chunk's own keys, through TMA: relative positions [0, new_hi). Load
        # group i (barrier i % STAGES) brings K_i and V_{i-1}, the two tiles
        # iteration i waits for; group 0 brings K_0 alone. Group i + STAGES is
        # issued once iteration i is done with the slots it refills. A K tile
        # past the sequence is still fetched (rows of the next sequence or TMA
        # zero fill, never used) so every group carries the same byte count.
        new_hi = gl.minimum(q_len, rel + TOK_M)
        n_tiles = gl.cdiv(new_hi, BLOCK_N)
        col = kvh * HEAD_D
        mbarrier.expect(bars.index(0), k_desc.block_type.nbytes)
        _tma_load(k_desc, [q_start, col], bars.index(0), k_smem.index(0))
        for i in gl.static_range(1, STAGES):
            _issue_group(k_desc, v_desc, bars.index(i), k_smem.index(i), v_smem.index(i - 1),
                         q_start + i * BLOCK_N, col, i - 1 < n_tiles)  # fmt: skip

        # Tile 0: scores and softmax only; its P V is issued with tile 1's scores.
        mbarrier.wait(bars.index(0), 0)
        s = warpgroup_mma(q_op, k_smem.index(0).permute((1, 0)), s_zero, use_acc=False)
        if rel + 1 < BLOCK_N:  # the tile crosses the diagonal
            s = gl.where(cols[None, :] <= qrel[:, None], s, float("-inf"))
        p, m_i, l_i, alpha = _softmax_step(s, m_i, l_i, qk_scale)
        o = o * gl.convert_layout(alpha, row_o)[:, None]
        p_op = gl.convert_layout(p.to(dtype), p_layout)
        _cta_barrier()  # all warps are past q K_0^T: its slot can be refilled
        _issue_group(k_desc, v_desc, bars.index(0), k_smem.index(0), v_smem.index(STAGES - 1),
                     q_start + STAGES * BLOCK_N, col, n_tiles > STAGES - 1)  # fmt: skip

        for j in range(1, n_tiles):
            slot = j % STAGES
            prev = (j - 1) % STAGES
            mbarrier.wait(bars.index(slot), (j // STAGES) & 1)
            s_tok = warpgroup_mma(
                q_op, k_smem.index(slot).permute((1, 0)), s_zero, use_acc=False, is_async=True
            )
            o_tok = warpgroup_mma(p_op, v_smem.index(prev), o, is_async=True)
            s = warpgroup_mma_wait(1, deps=(s_tok,))
            if j * BLOCK_N + BLOCK_N > rel + 1:
                s = gl.where((j * BLOCK_N + cols)[None, :] <= qrel[:, None], s, float("-inf"))
            p, m_i, l_i, alpha = _softmax_step(s, m_i, l_i, qk_scale)
            o, p_op = warpgroup_mma_wait(0, deps=(o_tok, p_op))
            o = o * gl.convert_layout(alpha, row_o)[:, None]
            p_op = gl.convert_layout(p.to(dtype), p_layout)
            _cta_barrier()  # every warp is done with K_j and V_{j-1}
            nxt = j + STAGES
            _issue_group(k_desc, v_desc, bars.index(slot), k_smem.index(slot), v_smem.index(prev),
                         q_start + nxt * BLOCK_N, col, nxt - 1 < n_tiles)  # fmt: skip

        # V of the last tile came with load group n_tiles.
        mbarrier.wait(bars.index(n_tiles % STAGES), (n_tiles // STAGES) & 1)
        o = warpgroup_mma(p_op, v_smem.index((n_tiles - 1) % STAGES), o)
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(bars.index(i))

        o = o / gl.convert_layout(l_i, row_o)[:, None]
        o_io = gl.convert_layout(o.to(dtype), io_layout)
        o_off = tok_io[:, None] * stride_ot + head_io[:, None] * stride_oh + d_io[None, :]
        gl.store(out_ptr + o_off, o_io, mask=io_mask)


# block_m, block_n, num_warps, stages. Measured on an H100 (bench/prefill_hopper.py):
# one warpgroup per 64-row tile keeps two programs per SM (82 KB of shared
# memory each), whose softmax and matrix products interleave.
DEFAULT_TILES = (64, 64, 4, 2)


def _tma_rows_ok(t: torch.Tensor) -> bool:
    """`t` ([T, kv_heads, head_dim]) can back a 2-D descriptor [T, kv_heads * head_dim]."""
    es = t.element_size()
    return (
        t.stride(2) == 1
        and t.stride(1) == t.shape[2]
        and (t.stride(0) * es) % 16 == 0
        and t.data_ptr() % 16 == 0
    )


def supported(
    q: torch.Tensor, k_cache: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor
) -> bool:
    """Whether this kernel serves these inputs: a Hopper GPU, 16-bit, head_dim
    64 or 128, new K/V rows a TMA descriptor can cover, a power-of-two group."""
    if not (HAS_GLUON and q.is_cuda):
        return False
    if torch.cuda.get_device_capability(q.device) != (9, 0):
        return False
    group = q.shape[1] // k_cache.shape[2]
    return (
        q.dtype in (torch.bfloat16, torch.float16)
        and q.shape[2] in (64, 128)
        and group & (group - 1) == 0
        and group <= 8
        and _tma_rows_ok(k_new)
        and _tma_rows_ok(v_new)
    )


def prefill_attention_hopper(
    q: torch.Tensor,  # [T, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    query_start_loc: torch.Tensor,  # [B + 1] int32
    seq_lens: torch.Tensor,  # [B] int32
    scale: float,
    *,
    max_query_len: int,
    k_new: torch.Tensor,  # [T, num_kv_heads, head_dim]
    v_new: torch.Tensor,
    out: torch.Tensor | None = None,
    block_m: int = DEFAULT_TILES[0],
    block_n: int = DEFAULT_TILES[1],
    num_warps: int = DEFAULT_TILES[2],
    stages: int = DEFAULT_TILES[3],
    pack_gqa: bool | None = None,
    q_regs: bool = False,
    maxnreg: int | None = None,
) -> torch.Tensor:  # [T, num_heads, head_dim]
    """Launcher. The caller checks `supported` and validates the inputs (the
    dispatcher in `paged_prefill_attention` does both)."""
    num_tokens, num_heads, head_dim = q.shape
    batch = seq_lens.shape[0]
    _, block_size, num_kv_heads, _ = k_cache.shape
    out = torch.empty_like(q, memory_format=torch.contiguous_format) if out is None else out
    if num_tokens == 0 or batch == 0 or max_query_len <= 0:
        return out
    group = num_heads // num_kv_heads
    if pack_gqa is None:  # pack when a tile holds at least 16 tokens of the group
        pack_gqa = group * 16 <= block_m
    group_tile = group if pack_gqa and group > 1 else 1
    if group_tile * 16 > block_m:
        raise checks.KernelInputError(
            f"block_m {block_m} is too small for a packed group of {group_tile}"
        )
    tok_m = block_m // group_tile
    gl_dtype = gl.bfloat16 if q.dtype == torch.bfloat16 else gl.float16
    layout = gl.NVMMASharedLayout.get_default_for([block_n, head_dim], gl_dtype)
    width = num_kv_heads * head_dim
    k_desc = GluonDescriptor(
        k_new, [num_tokens, width], [k_new.stride(0), 1], [block_n, head_dim], layout
    )
    v_desc = GluonDescriptor(
        v_new, [num_tokens, width], [v_new.stride(0), 1], [block_n, head_dim], layout
    )
    grid = (num_kv_heads if group_tile > 1 else num_heads, batch, math.ceil(max_query_len / tok_m))
    _prefill_attention_hopper_kernel[grid](
        q, out, k_desc, v_desc, k_cache, v_cache, block_tables,
        query_start_loc.contiguous(), seq_lens.contiguous(), scale * math.log2(math.e),
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        group,
        BLOCK_SIZE=block_size, BLOCK_M=block_m, BLOCK_N=block_n, HEAD_D=head_dim,
        GROUP_TILE=group_tile, STAGES=stages, Q_REGS=q_regs, num_warps=num_warps,
        **({"maxnreg": maxnreg} if maxnreg else {}),
    )  # fmt: skip
    return out
