"""Scatter new K/V rows into the paged cache at their flat slots.

Algorithm: one program per new token reads that token's K and V rows (all KV
heads at once) and writes them to `block = slot // block_size`,
`offset = slot % block_size` of the caches; a slot of -1 (a padding token, or
a prefix-cache hit that is already stored) writes nothing. This is the
`reshape_and_cache` step of PagedAttention (Kwon et al., "Efficient Memory
Management for Large Language Model Serving with PagedAttention", SOSP 2023).
"""

from __future__ import annotations

import torch

from tandem.kernels import checks

if checks.HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _store_kv_kernel(
        k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
        stride_kt, stride_kh, stride_vt, stride_vh,
        stride_cb, stride_cs, stride_ch,
        num_kv_heads, head_dim,
        BLOCK_SIZE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        t = tl.program_id(0)
        slot = tl.load(slot_ptr + t).to(tl.int64)
        if slot < 0:
            return
        h = tl.arange(0, BLOCK_H)[:, None]
        d = tl.arange(0, BLOCK_D)[None, :]
        mask = (h < num_kv_heads) & (d < head_dim)
        dst = (slot // BLOCK_SIZE) * stride_cb + (slot % BLOCK_SIZE) * stride_cs + h * stride_ch + d
        k = tl.load(k_ptr + t * stride_kt + h * stride_kh + d, mask=mask)
        tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
        v = tl.load(v_ptr + t * stride_vt + h * stride_vh + d, mask=mask)
        tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def check_cache_pair(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    """Both caches [num_blocks, block_size, num_kv_heads, head_dim], same layout."""
    checks.check_ndim("k_cache", k_cache, 4, "[num_blocks, block_size, num_kv_heads, head_dim]")
    checks.check_dtype("k_cache", k_cache, checks.FLOAT_DTYPES)
    if v_cache.shape != k_cache.shape or v_cache.stride() != k_cache.stride():
        raise checks.KernelInputError(
            f"v_cache: shape {tuple(v_cache.shape)} strides {tuple(v_cache.stride())} must match "
            f"k_cache's {tuple(k_cache.shape)} {tuple(k_cache.stride())}"
        )
    checks.check_same_dtype(k_cache=k_cache, v_cache=v_cache)
    checks.check_last_contiguous("k_cache", k_cache)
    checks.check_power_of_two("block_size (k_cache dim 1)", k_cache.shape[1])


def check_new_kv(name: str, t: torch.Tensor, k_cache: torch.Tensor, num_tokens: int) -> None:
    checks.check_ndim(name, t, 3, "[num_tokens, num_kv_heads, head_dim]")
    checks.check_dtype(name, t, checks.FLOAT_DTYPES)
    checks.check_dim(name, t, 0, num_tokens, "tokens")
    checks.check_dim(name, t, 1, k_cache.shape[2], "num_kv_heads of the cache")
    checks.check_dim(name, t, 2, k_cache.shape[3], "head_dim of the cache")
    checks.check_last_contiguous(name, t)


def store_kv(
    k: torch.Tensor,  # [T, num_kv_heads, head_dim]
    v: torch.Tensor,  # [T, num_kv_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [T] int64 (or int32), -1 = skip
) -> None:
    """Triton launcher; same contract as `store_kv_ref`."""
    check_cache_pair(k_cache, v_cache)
    checks.check_ndim("slot_mapping", slot_mapping, 1, "[num_tokens]")
    checks.check_dtype("slot_mapping", slot_mapping, checks.INDEX_DTYPES)
    num_tokens = slot_mapping.shape[0]
    check_new_kv("k", k, k_cache, num_tokens)
    check_new_kv("v", v, k_cache, num_tokens)
    checks.check_same_device(k=k, v=v, k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_mapping)
    if num_tokens == 0:
        return
    slot_mapping = slot_mapping.contiguous()
    _, block_size, num_kv_heads, head_dim = k_cache.shape
    _store_kv_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        num_kv_heads, head_dim,
        BLOCK_SIZE=block_size,
        BLOCK_H=checks.next_power_of_two(num_kv_heads),
        BLOCK_D=checks.next_power_of_two(head_dim),
        num_warps=4 if num_kv_heads * head_dim >= 1024 else 1,
    )  # fmt: skip


def store_kv_ref(
    k: torch.Tensor,  # [T, num_kv_heads, head_dim]
    v: torch.Tensor,  # [T, num_kv_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [T] int64, -1 = skip
) -> None:
    """Plain-PyTorch reference: index_copy_ into the flattened caches."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    nb, bs, h, d = k_cache.shape
    k_cache.view(nb * bs, h, d).index_copy_(0, slots, k[keep].to(k_cache.dtype))
    v_cache.view(nb * bs, h, d).index_copy_(0, slots, v[keep].to(v_cache.dtype))
