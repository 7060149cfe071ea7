"""Scatter new K/V rows into the paged cache at their flat slots.

Reference: the `reshape_and_cache` step of PagedAttention (Kwon et al., SOSP 2023).
"""

from __future__ import annotations

import torch


def store_kv_ref(
    k: torch.Tensor,  # [T, num_kv_heads, head_dim]
    v: torch.Tensor,  # [T, num_kv_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [T] int64, -1 = skip
) -> None:
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    nb, bs, h, d = k_cache.shape
    k_cache.view(nb * bs, h, d).index_copy_(0, slots, k[keep].to(k_cache.dtype))
    v_cache.view(nb * bs, h, d).index_copy_(0, slots, v[keep].to(v_cache.dtype))
