"""Prefill attention for Hopper GPUs (sm_90), written in Gluon, Triton's
explicit-layout dialect: warp-specialized, FlashAttention-3 style.

Same contract as `paged_prefill_attention` with `k_new`/`v_new` given (the
split path): the chunk's own K/V rows come from the contiguous new K/V,
earlier context from the paged cache. Reference: `paged_prefill_attention_ref`.

Why a second kernel: the portable Triton kernel cannot keep the tensor cores
busy during the softmax. Triton 3.6 waits for every wgmma group right after
it is issued and runs every warp through the same loop, so the exponentials
of one key tile and the matrix products of the next never overlap
(bench/NOTES-kernels.md). Gluon exposes warp specialization, mbarriers and the
asynchronous wgmma, so this kernel follows FlashAttention-3 (Shah et al.,
"FlashAttention-3: Fast and Accurate Attention with Asynchrony and
Low-precision", 2024):

- One program owns a 128-row query tile (packed GQA: 32 tokens x the 4 query
  heads of one KV head) served by two consumer warpgroups of 64 rows each, and
  one producer warpgroup that only issues TMA loads (24 registers per thread,
  so the consumers get 240).
- The producer streams K and V tiles into a ring of STAGES shared-memory slots:
  earlier context block by block through the block table (one 16-row TMA load
  per cache block, straight from the paged cache), then the chunk's own rows.
  Each slot has a "ready" mbarrier (TMA byte count) and an "empty" one that both
  consumers arrive on once their products have read it. No CTA-wide barrier
  ties the warpgroups together, so they drift apart: one runs its softmax while
  the other holds the tensor cores, and every K/V tile is shared by 128 rows.
- Inside a consumer (intra-warpgroup pipelining):

      issue S_j = Q K_j^T                 (async; Q stays in registers)
      issue O  += P_{j-1} V_{j-1}         (async)
      wait for S_j; softmax of S_j -> P_j (the tensor cores still run P V)
      wait for P V; rescale O

The query tile is the slowest grid axis, counted down, so the heaviest tiles of
every head launch first and light ones fill the tail.
"""

from __future__ import annotations

import functools
import math

import torch

from tandem.kernels import checks

try:  # Gluon's Hopper API (Triton >= 3.5); without it the Triton kernel serves every GPU
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor

    HAS_GLUON = checks.HAS_TRITON
    # The TMA load was renamed after Triton 3.6 (`async_copy_global_to_shared` -> `async_load`).
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
    def _fill_slot(
        new_desc, cache_desc, dst, ready, empty, t, wait_phase, refill,
        table_ptr, max_blocks, q_start, n_ctx, col,
    ):  # fmt: skip
        """Wait until `dst` is released, then TMA-load K or V tile `t` into it:
        context tiles one cache block per load through the block table, the
        chunk's own tiles from the contiguous new rows."""
        BLOCK_N: gl.constexpr = dst.type.shape[0]
        BLOCK_SIZE: gl.constexpr = cache_desc.block_type.shape[0]
        mbarrier.wait(empty, wait_phase, pred=refill)
        mbarrier.expect(ready, new_desc.block_type.nbytes)
        if t < n_ctx:
            for i in gl.static_range(BLOCK_N // BLOCK_SIZE):
                idx = t * (BLOCK_N // BLOCK_SIZE) + i
                blk = gl.load(table_ptr + idx, mask=idx < max_blocks, other=0)
                _tma_load(cache_desc, [blk * BLOCK_SIZE, col], ready, dst.slice(i * BLOCK_SIZE, BLOCK_SIZE))
        else:
            _tma_load(new_desc, [q_start + (t - n_ctx) * BLOCK_N, col], ready, dst)

    @gluon.jit
    def _producer(
        k_desc, v_desc, kc_desc, vc_desc, k_smem, v_smem, k_ready, v_ready, k_empty, v_empty,
        table_ptr, max_blocks, q_start, n_ctx, n_tiles, col,
    ):  # fmt: skip
        # Partition arguments are run-time values: sizes come from the buffers' types.
        STAGES: gl.constexpr = k_smem.type.shape[0]
        for t in range(n_tiles):
            slot = t % STAGES
            phase = ((t // STAGES) + 1) & 1
            refill = t >= STAGES  # a slot's first use needs no release
            _fill_slot(k_desc, kc_desc, k_smem.index(slot), k_ready.index(slot), k_empty.index(slot), t, phase,
                       refill, table_ptr, max_blocks, q_start, n_ctx, col)  # fmt: skip
            _fill_slot(v_desc, vc_desc, v_smem.index(slot), v_ready.index(slot), v_empty.index(slot), t, phase,
                       refill, table_ptr, max_blocks, q_start, n_ctx, col)  # fmt: skip

    @gluon.jit
    def _mask(s, j, n_ctx, ctx_len, rel, qrel, cols, BLOCK_N: gl.constexpr):
        """Context tiles hide positions past the context; the chunk's tiles that
        cross the diagonal hide keys after each row's own position."""
        if j < n_ctx:
            if j * BLOCK_N + BLOCK_N > ctx_len:
                s = gl.where((j * BLOCK_N + cols < ctx_len)[None, :], s, float("-inf"))
        else:
            jj = j - n_ctx
            if jj * BLOCK_N + BLOCK_N > rel + 1:
                s = gl.where((jj * BLOCK_N + cols)[None, :] <= qrel[:, None], s, float("-inf"))
        return s

    @gluon.jit
    def _consumer(
        q_ptr, out_ptr, k_smem, v_smem, k_ready, v_ready, k_empty, v_empty, qk_scale,
        q_start, q_len, ctx_len, rel, head_base, group_tile, group, stride_qt, stride_qh, stride_ot,
        stride_oh, n_ctx, n_tiles, row0,
    ):  # fmt: skip
        # Partition arguments are run-time values: sizes come from the buffers'
        # types; the first row of this warpgroup (`row0`, 0 or 64) and the packed
        # group (`group_tile`, 1 when heads are not packed) are used only outside the loop.
        STAGES: gl.constexpr = k_smem.type.shape[0]
        BLOCK_N: gl.constexpr = k_smem.type.shape[1]
        HEAD_D: gl.constexpr = k_smem.type.shape[2]
        ROWS: gl.constexpr = 64  # one warpgroup
        dtype: gl.constexpr = q_ptr.dtype.element_ty
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_N, 16]
        )
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, HEAD_D, 16]
        )
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        q_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=s_layout, k_width=2)
        io_layout: gl.constexpr = gl.BlockedLayout([1, 8], [32 // (HEAD_D // 8), HEAD_D // 8], [4, 1], [1, 0])
        row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)

        r_io = row0 + gl.arange(0, ROWS, layout=gl.SliceLayout(1, io_layout))
        d_io = gl.arange(0, HEAD_D, layout=gl.SliceLayout(0, io_layout))
        head_io = head_base + r_io % group_tile
        row_ok = (rel + r_io // group_tile < q_len) & (r_io % group_tile < group)
        tok_io = (q_start + rel + r_io // group_tile).to(gl.int64)
        io_mask = row_ok[:, None] & (d_io < HEAD_D)[None, :]
        q_off = tok_io[:, None] * stride_qt + head_io[:, None] * stride_qh + d_io[None, :]
        q_op = gl.convert_layout(gl.load(q_ptr + q_off, mask=io_mask, other=0.0), q_layout)

        s_zero = gl.zeros([ROWS, BLOCK_N], gl.float32, s_layout)
        m_i = gl.full([ROWS], float("-inf"), gl.float32, row_s)
        l_i = gl.zeros([ROWS], gl.float32, row_s)
        o = gl.zeros([ROWS, HEAD_D], gl.float32, o_layout)
        qrel = rel + (row0 + gl.arange(0, ROWS, layout=row_s)) // group_tile
        cols = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))

        # Tile 0: scores and softmax; its P V goes out with tile 1's scores.
        mbarrier.wait(k_ready.index(0), 0)
        s = warpgroup_mma(q_op, k_smem.index(0).permute((1, 0)), s_zero, use_acc=False)
        mbarrier.arrive(k_empty.index(0), count=1)
        s = _mask(s, 0, n_ctx, ctx_len, rel, qrel, cols, BLOCK_N)
        p, m_i, l_i, alpha = _softmax_step(s, m_i, l_i, qk_scale)
        p_op = gl.convert_layout(p.to(dtype), p_layout)

        for j in range(1, n_tiles):
            slot = j % STAGES
            prev = (j - 1) % STAGES
            mbarrier.wait(k_ready.index(slot), (j // STAGES) & 1)
            s_tok = warpgroup_mma(q_op, k_smem.index(slot).permute((1, 0)), s_zero, use_acc=False, is_async=True)
            mbarrier.wait(v_ready.index(prev), ((j - 1) // STAGES) & 1)
            o_tok = warpgroup_mma(p_op, v_smem.index(prev), o, is_async=True)
            s = warpgroup_mma_wait(1, deps=(s_tok,))
            mbarrier.arrive(k_empty.index(slot), count=1)
            s = _mask(s, j, n_ctx, ctx_len, rel, qrel, cols, BLOCK_N)
            p, m_i, l_i, alpha = _softmax_step(s, m_i, l_i, qk_scale)
            o, p_op = warpgroup_mma_wait(0, deps=(o_tok, p_op))
            mbarrier.arrive(v_empty.index(prev), count=1)
            o = o * gl.convert_layout(alpha, row_o)[:, None]
            p_op = gl.convert_layout(p.to(dtype), p_layout)

        last = (n_tiles - 1) % STAGES
        mbarrier.wait(v_ready.index(last), ((n_tiles - 1) // STAGES) & 1)
        o = warpgroup_mma(p_op, v_smem.index(last), o)
        o = o / gl.convert_layout(l_i, row_o)[:, None]
        o_off = tok_io[:, None] * stride_ot + head_io[:, None] * stride_oh + d_io[None, :]
        gl.store(out_ptr + o_off, gl.convert_layout(o.to(dtype), io_layout), mask=io_mask)

    @gluon.jit
    def _prefill_attention_hopper_kernel(
        q_ptr, out_ptr, k_desc, v_desc, kc_desc, vc_desc, block_tables_ptr,
        query_start_ptr, seq_lens_ptr, qk_scale,
        stride_qt, stride_qh, stride_ot, stride_oh, stride_bt, max_blocks,
        group,
        BLOCK_SIZE: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_D: gl.constexpr,
        GROUP_TILE: gl.constexpr, STAGES: gl.constexpr, CONSUMER_REGS: gl.constexpr,
        PRODUCER_REGS: gl.constexpr,
    ):  # fmt: skip
        BLOCK_M: gl.constexpr = 128  # two consumer warpgroups of 64 rows
        TOK_M: gl.constexpr = BLOCK_M // GROUP_TILE
        dtype: gl.constexpr = q_ptr.dtype.element_ty
        m_tile = gl.num_programs(2) - 1 - gl.program_id(2)  # heaviest tiles first, every head
        b = gl.program_id(1)
        q_start = gl.load(query_start_ptr + b)
        q_len = gl.load(query_start_ptr + b + 1) - q_start
        if m_tile * TOK_M < q_len:
            ctx_len = gl.load(seq_lens_ptr + b) - q_len
            rel = m_tile * TOK_M
            kvh = gl.program_id(0) // group if GROUP_TILE == 1 else gl.program_id(0)
            n_ctx = gl.cdiv(ctx_len, BLOCK_N)
            n_tiles = n_ctx + gl.cdiv(gl.minimum(q_len, rel + TOK_M), BLOCK_N)

            k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_D], k_desc.layout)
            v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_D], v_desc.layout)
            k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
            v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
            k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
            v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
            for i in gl.static_range(STAGES):
                mbarrier.init(k_ready.index(i), count=1)
                mbarrier.init(v_ready.index(i), count=1)
                mbarrier.init(k_empty.index(i), count=2)  # one arrival per consumer warpgroup
                mbarrier.init(v_empty.index(i), count=2)

            head_base = gl.program_id(0) if GROUP_TILE == 1 else kvh * group
            cargs = (
                q_ptr, out_ptr, k_smem, v_smem, k_ready, v_ready, k_empty, v_empty, qk_scale,
                q_start, q_len, ctx_len, rel, head_base, GROUP_TILE + q_len * 0, group,
                stride_qt, stride_qh, stride_ot, stride_oh, n_ctx, n_tiles,
            )  # fmt: skip
            zero = q_len * 0  # the warpgroups' first rows, as run-time values
            pargs = (
                k_desc, v_desc, kc_desc, vc_desc, k_smem, v_smem, k_ready, v_ready, k_empty, v_empty,
                block_tables_ptr + b.to(gl.int64) * stride_bt, max_blocks, q_start, n_ctx, n_tiles,
                kvh * HEAD_D,
            )  # fmt: skip
            # Tuple concatenation, not unpacking: the JIT front end has no starred expressions.
            gl.warp_specialize(
                [(_consumer, cargs + (zero,)), (_consumer, cargs + (zero + 64,)), (_producer, pargs)],  # noqa: RUF005
                [4, 4],
                [CONSUMER_REGS, PRODUCER_REGS],
            )


# block_n, stages. Measured on an H100 (bench/prefill_hopper.py): 128-key tiles
# and a two-slot ring (147 KB of shared memory); 64-key tiles and deeper rings
# were slower.
DEFAULT_TILES = (128, 2)


@functools.cache
def _is_sm90(device_index: int | None) -> bool:
    # Asked once per layer of every prefill step: remember the answer per device.
    return torch.cuda.get_device_capability(device_index) == (9, 0)


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
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor
) -> bool:
    """Whether this kernel serves these inputs: a Hopper GPU, 16-bit, head_dim
    64 or 128, a power-of-two GQA group, new K/V rows a TMA descriptor can
    cover, and contiguous caches whose blocks (a power of two of at least 8
    rows, the swizzle period of a TMA tile) it can address as
    [num_blocks * block_size, kv_heads * head_dim] rows."""
    if not (HAS_GLUON and q.is_cuda and _is_sm90(q.device.index)):
        return False
    group = q.shape[1] // k_cache.shape[2]
    return (
        q.dtype in (torch.bfloat16, torch.float16)
        and q.shape[2] in (64, 128)
        and group & (group - 1) == 0
        and group <= 8
        and _tma_rows_ok(k_new)
        and _tma_rows_ok(v_new)
        and all(c.is_contiguous() and c.data_ptr() % 16 == 0 for c in (k_cache, v_cache))
        and 8 <= k_cache.shape[1] <= 64
        and k_cache.shape[1] & (k_cache.shape[1] - 1) == 0
    )


def prefill_attention_hopper(
    q: torch.Tensor,  # [T, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim], contiguous
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
    block_n: int = DEFAULT_TILES[0],
    stages: int = DEFAULT_TILES[1],
    pack_gqa: bool | None = None,
    consumer_regs: int = 240,
    producer_regs: int = 24,
) -> torch.Tensor:  # [T, num_heads, head_dim]
    """Launcher; the caller checks `supported` and validates the inputs (the
    dispatcher in `paged_prefill_attention` does both). Knobs: `block_n` keys
    per tile, `stages` ring slots, `pack_gqa` (None: pack groups of up to 4),
    the register split between consumer and producer warpgroups."""
    num_tokens, num_heads, head_dim = q.shape
    batch = seq_lens.shape[0]
    num_blocks, block_size, num_kv_heads, _ = k_cache.shape
    out = torch.empty_like(q, memory_format=torch.contiguous_format) if out is None else out
    if num_tokens == 0 or batch == 0 or max_query_len <= 0:
        return out
    if block_n % block_size or block_n not in (64, 128):
        raise checks.KernelInputError(f"block_n must be 64 or 128 and a multiple of block_size {block_size}")
    group = num_heads // num_kv_heads
    if pack_gqa is None:  # 16 tokens or more per consumer warpgroup
        pack_gqa = group * 16 <= 64
    group_tile = group if pack_gqa and group > 1 else 1
    if group_tile * 16 > 64:
        raise checks.KernelInputError(f"a packed group of {group_tile} leaves fewer than 16 tokens per warpgroup")
    tok_m = 128 // group_tile
    gl_dtype = gl.bfloat16 if q.dtype == torch.bfloat16 else gl.float16
    layout = gl.NVMMASharedLayout.get_default_for([block_n, head_dim], gl_dtype)
    width = num_kv_heads * head_dim
    k_desc = GluonDescriptor(k_new, [num_tokens, width], [k_new.stride(0), 1], [block_n, head_dim], layout)
    v_desc = GluonDescriptor(v_new, [num_tokens, width], [v_new.stride(0), 1], [block_n, head_dim], layout)
    rows = num_blocks * block_size
    kc_desc = GluonDescriptor(k_cache, [rows, width], [width, 1], [block_size, head_dim], layout)
    vc_desc = GluonDescriptor(v_cache, [rows, width], [width, 1], [block_size, head_dim], layout)
    grid = (num_kv_heads if group_tile > 1 else num_heads, batch, math.ceil(max_query_len / tok_m))
    _prefill_attention_hopper_kernel[grid](
        q, out, k_desc, v_desc, kc_desc, vc_desc, block_tables,
        query_start_loc.contiguous(), seq_lens.contiguous(), scale * math.log2(math.e),
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0), block_tables.shape[1],
        group,
        BLOCK_SIZE=block_size, BLOCK_N=block_n, HEAD_D=head_dim, GROUP_TILE=group_tile, STAGES=stages,
        CONSUMER_REGS=consumer_regs, PRODUCER_REGS=producer_regs, num_warps=4,
    )  # fmt: skip
    return out
