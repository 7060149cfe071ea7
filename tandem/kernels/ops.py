"""Dispatch: Triton kernels on CUDA, plain-PyTorch references elsewhere.

The model code calls only these functions. Each forwards to the reference
(`*_ref`) unless the tensors live on a CUDA device and the Triton kernel for
that op is available.
"""

from __future__ import annotations

import torch

from tandem.kernels.paged_decode_attention import paged_decode_attention_ref
from tandem.kernels.paged_prefill_attention import paged_prefill_attention_ref
from tandem.kernels.rms_norm import rms_norm_ref
from tandem.kernels.rotary import rotary_ref
from tandem.kernels.silu_mul import silu_mul_ref
from tandem.kernels.store_kv import store_kv_ref


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    store_kv_ref(k, v, k_cache, v_cache, slot_mapping)


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    return paged_decode_attention_ref(q, k_cache, v_cache, block_tables, seq_lens, scale)


def paged_prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    *,
    max_query_len: int,
    max_seq_len: int,
) -> torch.Tensor:
    return paged_prefill_attention_ref(
        q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale
    )


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    return rms_norm_ref(x, weight, eps, residual)


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    return silu_mul_ref(x)


def rotary(
    x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    return rotary_ref(x, positions, cos, sin)
