"""SwiGLU activation (Shazeer, "GLU Variants Improve Transformer", 2020):
silu(gate) * up over a fused [T, 2 * inter] gate/up projection.

Algorithm of the kernel: a 2-D grid of (token, column tile) programs; each
reads its gate and up tiles once, computes silu in float32 (rounded to the
input dtype, as the unfused op would) and writes the product: one read of
the input and one write of half its size, the floor for this op.
"""

from __future__ import annotations

import torch

from tandem.kernels import checks

#: Columns per program: 16-byte vectors for every thread of 4 warps, twice.
BLOCK_COLS = 1024

if checks.HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _silu_mul_kernel(
        x_ptr, out_ptr, stride_x, stride_o, inter,
        BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < inter
        gate = tl.load(x_ptr + row * stride_x + cols, mask=mask).to(tl.float32)
        up = tl.load(x_ptr + row * stride_x + inter + cols, mask=mask).to(tl.float32)
        ty = out_ptr.dtype.element_ty
        act = (gate / (1.0 + tl.exp(-gate))).to(ty).to(tl.float32)
        tl.store(out_ptr + row * stride_o + cols, (act * up).to(ty), mask=mask)


def silu_mul(x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Triton launcher; same contract as `silu_mul_ref`. [T, 2 * inter] -> [T, inter]."""
    checks.check_ndim("x", x, 2, "[num_tokens, 2 * intermediate]")
    checks.check_dtype("x", x, checks.FLOAT_DTYPES)
    checks.check_last_contiguous("x", x)
    num_tokens, width = x.shape
    if width % 2:
        raise checks.KernelInputError(f"x: last dim {width} must be even (gate and up halves)")
    inter = width // 2
    expected = torch.empty((num_tokens, inter), dtype=x.dtype, device=x.device)
    out = expected if out is None else out
    checks.check_out("out", out, expected)
    if num_tokens == 0 or inter == 0:
        return out
    block = min(BLOCK_COLS, checks.next_power_of_two(inter))
    grid = (num_tokens, (inter + block - 1) // block)
    _silu_mul_kernel[grid](x, out, x.stride(0), out.stride(0), inter, BLOCK=block, num_warps=4)
    return out


def silu_mul_ref(x: torch.Tensor) -> torch.Tensor:  # [T, 2 * inter] -> [T, inter]
    """Plain-PyTorch reference."""
    gate, up = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up
