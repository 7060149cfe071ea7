"""RoPE on the new query and key rows fused with the paged KV-cache store.

Without fusion a decode step reads and writes q and k once for the rotation
and reads k and v again for the store; here one program per token reads q, k
and v once, rotates q (returned) and k in float32, and writes the rotated k
and the untouched v straight to their cache slot (-1: no store). Rotation as
in `rotary.py` (Su et al., 2021, NeoX rotate-halves); the store as in
`store_kv.py` (Kwon et al., SOSP 2023).
"""

from __future__ import annotations

import torch

from tandem.kernels import checks
from tandem.kernels.rotary import check_tables, rotary_ref
from tandem.kernels.store_kv import check_cache_pair, check_new_kv, store_kv_ref

if checks.HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _rotate(x1, x2, c, s):
        return x1 * c - x2 * s, x2 * c + x1 * s

    @triton.jit
    def _rotary_store_kv_kernel(
        q_ptr, k_ptr, v_ptr, q_out_ptr, k_cache_ptr, v_cache_ptr, k_out_ptr,
        pos_ptr, cos_ptr, sin_ptr, slot_ptr,
        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
        stride_kot, stride_koh,
        stride_cos, stride_cb, stride_cs, stride_ch,
        num_heads, num_kv_heads, half_dim,
        BLOCK_SIZE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_KVH: tl.constexpr,
        BLOCK_HALF: tl.constexpr, K_OUT: tl.constexpr,
    ):  # fmt: skip
        t = tl.program_id(0)
        pos = tl.load(pos_ptr + t).to(tl.int64)
        d = tl.arange(0, BLOCK_HALF)[None, :]
        dmask = d < half_dim
        c = tl.load(cos_ptr + pos * stride_cos + d, mask=dmask)
        s = tl.load(sin_ptr + pos * stride_cos + d, mask=dmask)

        h = tl.arange(0, BLOCK_H)[:, None]
        qmask = (h < num_heads) & dmask
        q_src = q_ptr + t * stride_qt + h * stride_qh + d
        q1, q2 = _rotate(
            tl.load(q_src, mask=qmask).to(tl.float32),
            tl.load(q_src + half_dim, mask=qmask).to(tl.float32),
            c, s,
        )  # fmt: skip
        q_dst = q_out_ptr + t * stride_ot + h * stride_oh + d
        tl.store(q_dst, q1.to(q_out_ptr.dtype.element_ty), mask=qmask)
        tl.store(q_dst + half_dim, q2.to(q_out_ptr.dtype.element_ty), mask=qmask)

        kh = tl.arange(0, BLOCK_KVH)[:, None]
        kmask = (kh < num_kv_heads) & dmask
        k_src = k_ptr + t * stride_kt + kh * stride_kh + d
        k1, k2 = _rotate(
            tl.load(k_src, mask=kmask).to(tl.float32),
            tl.load(k_src + half_dim, mask=kmask).to(tl.float32),
            c, s,
        )  # fmt: skip
        # Round to k's dtype first, exactly as rotating then storing would.
        k1 = k1.to(k_ptr.dtype.element_ty)
        k2 = k2.to(k_ptr.dtype.element_ty)
        if K_OUT:  # may be k itself: every element is read above before it is written
            k_dst = k_out_ptr + t * stride_kot + kh * stride_koh + d
            tl.store(k_dst, k1, mask=kmask)
            tl.store(k_dst + half_dim, k2, mask=kmask)
        slot = tl.load(slot_ptr + t).to(tl.int64)
        if slot >= 0:
            cache = (slot // BLOCK_SIZE) * stride_cb + (slot % BLOCK_SIZE) * stride_cs
            cache += kh * stride_ch + d
            ty = k_cache_ptr.dtype.element_ty
            tl.store(k_cache_ptr + cache, k1.to(ty), mask=kmask)
            tl.store(k_cache_ptr + cache + half_dim, k2.to(ty), mask=kmask)
            v_src = v_ptr + t * stride_vt + kh * stride_vh + d
            tl.store(v_cache_ptr + cache, tl.load(v_src, mask=kmask).to(ty), mask=kmask)
            v2 = tl.load(v_src + half_dim, mask=kmask)
            tl.store(v_cache_ptr + cache + half_dim, v2.to(ty), mask=kmask)


def rotary_store_kv(
    q: torch.Tensor,  # [T, num_heads, head_dim]
    k: torch.Tensor,  # [T, num_kv_heads, head_dim]
    v: torch.Tensor,  # [T, num_kv_heads, head_dim]
    positions: torch.Tensor,  # [T] int64
    cos: torch.Tensor,  # [max_pos, head_dim // 2] float32
    sin: torch.Tensor,
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [T] int64, -1 = skip
    *,
    out: torch.Tensor | None = None,
    k_out: torch.Tensor | None = None,
) -> torch.Tensor:  # [T, num_heads, head_dim], the rotated q
    """Triton launcher; same contract as `rotary_store_kv_ref`."""
    check_cache_pair(k_cache, v_cache)
    checks.check_ndim("slot_mapping", slot_mapping, 1, "[num_tokens]")
    checks.check_dtype("slot_mapping", slot_mapping, checks.INDEX_DTYPES)
    num_tokens = slot_mapping.shape[0]
    check_new_kv("k", k, k_cache, num_tokens)
    check_new_kv("v", v, k_cache, num_tokens)
    checks.check_ndim("q", q, 3, "[num_tokens, num_heads, head_dim]")
    checks.check_dtype("q", q, checks.FLOAT_DTYPES)
    checks.check_dim("q", q, 0, num_tokens, "tokens")
    checks.check_dim("q", q, 2, k.shape[2], "head_dim of k")
    checks.check_last_contiguous("q", q)
    num_heads, head_dim = q.shape[1], q.shape[2]
    check_tables(positions, cos, sin, head_dim, num_tokens)
    checks.check_same_device(
        q=q, k=k, v=v, positions=positions, cos=cos, k_cache=k_cache, slot_mapping=slot_mapping
    )
    expected = torch.empty_like(q, memory_format=torch.contiguous_format)
    if out is None:
        out = expected
    checks.check_out("out", out, expected)
    if num_tokens == 0:
        return out
    if k_out is not None:
        check_k_out(k_out, k)
    num_kv_heads = k.shape[1]
    k_dst = k if k_out is None else k_out
    _rotary_store_kv_kernel[(num_tokens,)](
        q, k, v, out, k_cache, v_cache, k_dst, positions.contiguous(), cos, sin, slot_mapping.contiguous(),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), k_dst.stride(0), k_dst.stride(1),
        cos.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        num_heads, num_kv_heads, head_dim // 2,
        BLOCK_SIZE=k_cache.shape[1],
        BLOCK_H=checks.next_power_of_two(num_heads),
        BLOCK_KVH=checks.next_power_of_two(num_kv_heads),
        BLOCK_HALF=checks.next_power_of_two(head_dim // 2),
        K_OUT=k_out is not None,
        num_warps=4 if num_heads * head_dim >= 1024 else 1,
    )  # fmt: skip
    return out


def rotary_store_kv_ref(
    q: torch.Tensor,  # [T, num_heads, head_dim]
    k: torch.Tensor,  # [T, num_kv_heads, head_dim]
    v: torch.Tensor,  # [T, num_kv_heads, head_dim]
    positions: torch.Tensor,  # [T] int64
    cos: torch.Tensor,  # [max_pos, head_dim // 2] float32
    sin: torch.Tensor,
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [T] int64, -1 = skip
    *,
    k_out: torch.Tensor | None = None,
) -> torch.Tensor:  # [T, num_heads, head_dim], the rotated q
    """Plain-PyTorch reference: rotate q and k, store rotated k and v, return
    rotated q. With `k_out` (which may be k itself) the rotated k of every token
    is also written there, for attention that reads this step's rows directly."""
    k_rot = rotary_ref(k, positions, cos, sin)
    store_kv_ref(k_rot, v, k_cache, v_cache, slot_mapping)
    if k_out is not None:
        check_k_out(k_out, k)
        k_out.copy_(k_rot)
    return rotary_ref(q, positions, cos, sin)


def check_k_out(k_out: torch.Tensor, k: torch.Tensor) -> None:
    """`k_out` takes the rotated k: same shape, dtype and device as k, rows contiguous."""
    if k_out.shape != k.shape or k_out.dtype != k.dtype or k_out.device != k.device:
        raise checks.KernelInputError(
            f"k_out: expected {tuple(k.shape)} {k.dtype} on {k.device}, "
            f"got {tuple(k_out.shape)} {k_out.dtype} on {k_out.device}"
        )
    checks.check_last_contiguous("k_out", k_out)
