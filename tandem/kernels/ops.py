"""Dispatch: Triton kernels on CUDA, plain-PyTorch references elsewhere.

The model code calls only these functions. Each forwards to the Triton
launcher when its tensors live on a CUDA device and Triton is importable,
and to the reference (`*_ref`) otherwise (CPU runs, CPU-only installs).
Triton is imported by the kernel modules only when it is installed.
"""

from __future__ import annotations

import torch

from tandem.kernels import paged_decode_attention as _decode
from tandem.kernels import paged_prefill_attention as _prefill
from tandem.kernels import rms_norm as _rms_norm
from tandem.kernels import rotary as _rotary
from tandem.kernels import rotary_store_kv as _rotary_store_kv
from tandem.kernels import silu_mul as _silu_mul
from tandem.kernels import store_kv as _store_kv
from tandem.kernels.checks import HAS_TRITON


def use_triton(t: torch.Tensor) -> bool:
    """Whether ops on tensors like `t` go to the Triton kernels."""
    return HAS_TRITON and t.is_cuda


def store_kv(
    k: torch.Tensor,  # [T, num_kv_heads, head_dim]
    v: torch.Tensor,
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [T] int64, -1 = skip
) -> None:
    if use_triton(k_cache):
        _store_kv.store_kv(k, v, k_cache, v_cache, slot_mapping)
    else:
        _store_kv.store_kv_ref(k, v, k_cache, v_cache, slot_mapping)


def paged_decode_attention(
    q: torch.Tensor,  # [B, num_heads, head_dim]
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    seq_lens: torch.Tensor,  # [B] int32
    scale: float,
) -> torch.Tensor:  # [B, num_heads, head_dim]
    if use_triton(q):
        return _decode.paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale)
    return _decode.paged_decode_attention_ref(q, k_cache, v_cache, block_tables, seq_lens, scale)


def paged_prefill_attention(
    q: torch.Tensor,  # [T, num_heads, head_dim]
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    query_start_loc: torch.Tensor,  # [B + 1] int32
    seq_lens: torch.Tensor,  # [B] int32
    scale: float,
    *,
    max_query_len: int,
    max_seq_len: int,
    k_new: torch.Tensor | None = None,  # [T, num_kv_heads, head_dim], this step's rotated K
    v_new: torch.Tensor | None = None,
) -> torch.Tensor:  # [T, num_heads, head_dim]
    """`k_new`/`v_new` (optional) are this step's K/V rows, equal to what it
    stored; the kernel reads the chunk's own positions from them (contiguous,
    TMA-friendly) and only earlier context from the cache. The reference reads
    everything from the cache."""
    if use_triton(q):
        return _prefill.paged_prefill_attention(
            q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale,
            max_query_len=max_query_len, k_new=k_new, v_new=v_new,
        )  # fmt: skip
    return _prefill.paged_prefill_attention_ref(
        q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale
    )


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (normed, new_residual); new_residual is x + residual (x itself without one)."""
    if use_triton(x) and x.dim() == 2:
        return _rms_norm.rms_norm(x, weight, eps, residual)
    return _rms_norm.rms_norm_ref(x, weight, eps, residual)


def silu_mul(x: torch.Tensor) -> torch.Tensor:  # [T, 2 * inter] -> [T, inter]
    if use_triton(x) and x.dim() == 2:
        return _silu_mul.silu_mul(x)
    return _silu_mul.silu_mul_ref(x)


def rotary(
    x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    if use_triton(x):
        return _rotary.rotary(x, positions, cos, sin)
    return _rotary.rotary_ref(x, positions, cos, sin)


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
    k_out: torch.Tensor | None = None,
) -> torch.Tensor:  # [T, num_heads, head_dim]
    """RoPE on q and k plus store of the rotated k and v into the paged cache,
    in one pass. Returns the rotated q; the rotated k also goes to `k_out`
    when given (which may be k itself), else it exists only in the cache."""
    args = (q, k, v, positions, cos, sin, k_cache, v_cache, slot_mapping)
    if use_triton(q):
        return _rotary_store_kv.rotary_store_kv(*args, k_out=k_out)
    return _rotary_store_kv.rotary_store_kv_ref(*args, k_out=k_out)
