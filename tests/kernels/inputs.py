"""Factories for kernel test inputs: paged caches with shuffled, non-contiguous
block tables, RoPE tables, error measures and per-dtype tolerances."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: Relative L2 error allowed against a float32 reference fed the same inputs.
#: Attention accumulates over the context; bf16 keeps 8 mantissa bits (P is
#: rounded to the input dtype before the PV product, as in FlashAttention).
ATTENTION_TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 1.5e-2}
#: Element-wise kernels round exactly where the references do: only one-ulp
#: flips at rounding ties remain.
ELEMENTWISE_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||, in float64; NaN anywhere gives NaN (which fails)."""
    o, r = out.double().cpu(), ref.double().cpu()
    return float((o - r).norm() / r.norm())


def randn(gen: torch.Generator, *shape: int, dtype: torch.dtype) -> torch.Tensor:
    """Standard-normal values (never zeros), made on the CPU so every device
    sees the same numbers, then moved to the test device."""
    return torch.randn(*shape, generator=gen).to(dtype=dtype, device=DEVICE)


def poisoned(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    """An output buffer full of NaN: any element a kernel fails to write shows."""
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


@dataclass(frozen=True)
class PagedKV:
    k_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # [B, max_blocks] int32
    seq_lens: torch.Tensor  # [B] int32


def make_paged(
    gen: torch.Generator,
    seq_lens: list[int],
    *,
    block_size: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    spare_blocks: int = 5,
) -> PagedKV:
    """Random caches holding every sequence, with each sequence's blocks drawn
    from a shuffled pool (so tables are non-contiguous with holes between), one
    extra table column, and unused entries pointing at random valid blocks."""
    needed = [math.ceil(n / block_size) for n in seq_lens]
    num_blocks = sum(needed) + spare_blocks
    width = max(needed) + 1
    ids = torch.randperm(num_blocks, generator=gen)
    tables = torch.randint(0, num_blocks, (len(seq_lens), width), generator=gen)
    used = 0
    for b, count in enumerate(needed):
        tables[b, :count] = ids[used : used + count]
        used += count
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    return PagedKV(
        k_cache=randn(gen, *shape, dtype=dtype),
        v_cache=randn(gen, *shape, dtype=dtype),
        block_tables=tables.to(torch.int32).to(DEVICE),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE),
    )


def upcast(kv: PagedKV) -> PagedKV:
    """The same values in float32, for a reference that does not round its output."""
    return PagedKV(kv.k_cache.float(), kv.v_cache.float(), kv.block_tables, kv.seq_lens)


def rope_tables(max_pos: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, ...]:
    """cos and sin [max_pos, head_dim // 2] float32, as Llama builds them."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return angles.cos().float().to(DEVICE), angles.sin().float().to(DEVICE)
