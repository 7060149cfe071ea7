"""Paged attention as the models see it: metadata for one engine step and the
layer that writes new K/V into the paged cache and attends over it.

KV cache layout (one tensor per layer and per K/V), shared with the kernels
and the KV transports:

    k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim]

A token at position p of a sequence lives in block `block_table[p // block_size]`
at offset `p % block_size`; its flat slot is `block * block_size + offset`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tandem.kernels import ops


@dataclass(frozen=True)
class AttentionMetadata:
    """Everything attention needs for one step over a flat batch of T tokens
    from B sequences (prefill chunks and decodes mixed)."""

    slot_mapping: torch.Tensor  # [T] int64, flat cache slot of each new token (-1: do not store)
    query_start_loc: torch.Tensor  # [B + 1] int32, cumulative query lengths
    seq_lens: torch.Tensor  # [B] int32, context length after this step (cached + new)
    block_tables: torch.Tensor  # [B, max_blocks] int32, unused entries may hold any valid id
    max_query_len: int
    max_seq_len: int
    decode_only: bool  # every sequence has exactly one query token
    # Called after layer i has written its K/V for this step (layer-wise KV export).
    on_layer_stored: Callable[[int], None] | None = None


def rope_store_attend(
    layer_idx: int,
    q: torch.Tensor,  # [T, num_heads, head_dim], before RoPE
    k: torch.Tensor,  # [T, num_kv_heads, head_dim], before RoPE
    v: torch.Tensor,  # [T, num_kv_heads, head_dim]
    positions: torch.Tensor,  # [T] int64
    cos: torch.Tensor,  # [max_pos, head_dim // 2] float32
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:  # [T, num_heads, head_dim]
    """RoPE on q/k and the K/V store in one fused op, then paged attention
    over everything the sequences have cached (including this step's tokens).

    Prefill steps on the GPU also keep the rotated k in place (k is this
    layer's scratch projection output) so the attention kernel reads the
    step's own K/V rows contiguously, with TMA, and only earlier context from
    the paged cache: on an H100 the warp-specialized kernel then runs at 1.12x
    SDPA's cuDNN backend at 4k tokens (bench/NOTES-kernels.md)."""
    split = not meta.decode_only and ops.use_triton(q)
    q = ops.rotary_store_kv(
        q, k, v, positions, cos, sin, k_cache, v_cache, meta.slot_mapping, k_out=k if split else None
    )
    if meta.on_layer_stored is not None:
        meta.on_layer_stored(layer_idx)
    if meta.decode_only:
        return ops.paged_decode_attention(q, k_cache, v_cache, meta.block_tables, meta.seq_lens, scale)
    return ops.paged_prefill_attention(
        q,
        k_cache,
        v_cache,
        meta.block_tables,
        meta.query_start_loc,
        meta.seq_lens,
        scale,
        max_query_len=meta.max_query_len,
        max_seq_len=meta.max_seq_len,
        k_new=k if split else None,
        v_new=v if split else None,
    )
