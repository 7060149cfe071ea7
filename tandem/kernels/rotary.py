"""Rotary position embedding (Su et al., "RoFormer: Enhanced Transformer with
Rotary Position Embedding", 2021), GPT-NeoX style (rotate halves), as Llama,
Mistral and Qwen use it.

`cos` and `sin` are precomputed [max_position, head_dim // 2] float32 tables
(rope scaling already applied). With x = (x1, x2) split into halves and
(c, s) the table rows at the token's position:

    out = (x1 * c - x2 * s, x2 * c + x1 * s)

Algorithm of the kernel: one program per token rotates all of its heads at
once, in float32, reading the two table rows once for every head.
"""

from __future__ import annotations

import torch

from tandem.kernels import checks

if checks.HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _rotary_kernel(
        x_ptr, out_ptr, pos_ptr, cos_ptr, sin_ptr,
        stride_xt, stride_xh, stride_ot, stride_oh, stride_cos,
        num_heads, half_dim,
        BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
    ):  # fmt: skip
        t = tl.program_id(0)
        pos = tl.load(pos_ptr + t).to(tl.int64)
        h = tl.arange(0, BLOCK_H)[:, None]
        d = tl.arange(0, BLOCK_HALF)[None, :]
        mask = (h < num_heads) & (d < half_dim)
        c = tl.load(cos_ptr + pos * stride_cos + d, mask=d < half_dim)
        s = tl.load(sin_ptr + pos * stride_cos + d, mask=d < half_dim)
        src = x_ptr + t * stride_xt + h * stride_xh + d
        x1 = tl.load(src, mask=mask).to(tl.float32)
        x2 = tl.load(src + half_dim, mask=mask).to(tl.float32)
        dst = out_ptr + t * stride_ot + h * stride_oh + d
        ty = out_ptr.dtype.element_ty
        tl.store(dst, (x1 * c - x2 * s).to(ty), mask=mask)
        tl.store(dst + half_dim, (x2 * c + x1 * s).to(ty), mask=mask)


def check_tables(
    positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_dim: int, num_tokens: int
) -> None:
    """Shared by `rotary` and `rotary_store_kv`."""
    if head_dim % 2:
        raise checks.KernelInputError(f"head_dim {head_dim} must be even for rotate-halves RoPE")
    checks.check_ndim("positions", positions, 1, "[num_tokens]")
    checks.check_dtype("positions", positions, checks.INDEX_DTYPES)
    checks.check_dim("positions", positions, 0, num_tokens, "tokens")
    for name, table in (("cos", cos), ("sin", sin)):
        checks.check_ndim(name, table, 2, "[max_position, head_dim // 2]")
        checks.check_dtype(name, table, (torch.float32,))
        checks.check_dim(name, table, 1, head_dim // 2, "head_dim // 2")
        checks.check_last_contiguous(name, table)
    if sin.shape != cos.shape or sin.stride() != cos.stride():
        raise checks.KernelInputError(
            f"sin: shape {tuple(sin.shape)} strides {tuple(sin.stride())} must match cos's "
            f"{tuple(cos.shape)} {tuple(cos.stride())}"
        )


def rotary(
    x: torch.Tensor,  # [T, heads, head_dim]
    positions: torch.Tensor,  # [T] int64
    cos: torch.Tensor,  # [max_pos, head_dim // 2] float32
    sin: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:  # [T, heads, head_dim]
    """Triton launcher; same contract as `rotary_ref`."""
    checks.check_ndim("x", x, 3, "[num_tokens, heads, head_dim]")
    checks.check_dtype("x", x, checks.FLOAT_DTYPES)
    checks.check_last_contiguous("x", x)
    num_tokens, num_heads, head_dim = x.shape
    check_tables(positions, cos, sin, head_dim, num_tokens)
    checks.check_same_device(x=x, positions=positions, cos=cos, sin=sin)
    expected = torch.empty_like(x, memory_format=torch.contiguous_format)
    if out is None:
        out = expected
    checks.check_out("out", out, expected)
    if num_tokens == 0:
        return out
    _rotary_kernel[(num_tokens,)](
        x, out, positions.contiguous(), cos, sin,
        x.stride(0), x.stride(1), out.stride(0), out.stride(1), cos.stride(0),
        num_heads, head_dim // 2,
        BLOCK_H=checks.next_power_of_two(num_heads),
        BLOCK_HALF=checks.next_power_of_two(head_dim // 2),
        num_warps=4 if num_heads * head_dim >= 1024 else 1,
    )  # fmt: skip
    return out


def rotary_ref(
    x: torch.Tensor,  # [T, heads, head_dim]
    positions: torch.Tensor,  # [T] int64
    cos: torch.Tensor,  # [max_pos, head_dim // 2] float32
    sin: torch.Tensor,
) -> torch.Tensor:
    """Plain-PyTorch reference, computed in float32, returned in x's dtype."""
    c = cos[positions].unsqueeze(1)  # [T, 1, d/2]
    s = sin[positions].unsqueeze(1)
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)
