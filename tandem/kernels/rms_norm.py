"""RMSNorm (Zhang & Sennrich, "Root Mean Square Layer Normalization", 2019),
optionally fused with the residual add that precedes it. Returns
(normed, new_residual).

Algorithm of the kernel: one program per token row. It adds the residual
(rounded to the activation dtype, as the unfused add would), writes the sum
back as the new residual, accumulates the sum of squares in float32, and
writes `weight * (x * rsqrt(mean(x^2) + eps))`, with the normalized row
rounded to the activation dtype before the weight multiply as in Llama's
reference code. One read of x (and residual), one or two writes: the floor.
"""

from __future__ import annotations

import torch

from tandem.kernels import checks

#: One program holds a whole row in registers; wider rows would spill.
MAX_HIDDEN = 65536

if checks.HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _rms_norm_kernel(
        x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr,
        stride_x, stride_r, stride_o, stride_ro,
        hidden, eps,
        HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < hidden
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
        if HAS_RESIDUAL:
            r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0)
            x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
            tl.store(res_out_ptr + row * stride_ro + cols, x, mask=mask)
        xf = x.to(tl.float32)
        inv = tl.rsqrt(tl.sum(xf * xf, axis=0) / hidden + eps)
        normed = (xf * inv).to(x_ptr.dtype.element_ty).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * stride_o + cols, (w * normed).to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(
    x: torch.Tensor,  # [T, hidden]
    weight: torch.Tensor,  # [hidden]
    eps: float,
    residual: torch.Tensor | None = None,  # [T, hidden]
    *,
    out: torch.Tensor | None = None,
    residual_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton launcher; same contract as `rms_norm_ref`. Without a residual the
    returned residual is `x` itself, as in the reference."""
    checks.check_ndim("x", x, 2, "[num_tokens, hidden]")
    checks.check_dtype("x", x, checks.FLOAT_DTYPES)
    checks.check_dtype("weight", weight, checks.FLOAT_DTYPES)
    checks.check_last_contiguous("x", x)
    num_tokens, hidden = x.shape
    checks.check_ndim("weight", weight, 1, "[hidden]")
    checks.check_dim("weight", weight, 0, hidden, "hidden size of x")
    checks.check_contiguous("weight", weight)
    if hidden > MAX_HIDDEN:
        raise checks.KernelInputError(f"x: hidden size {hidden} exceeds {MAX_HIDDEN}")
    checks.check_same_device(x=x, weight=weight)
    expected = torch.empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    out = expected if out is None else out
    checks.check_out("out", out, expected)
    if residual is not None:
        checks.check_ndim("residual", residual, 2, "[num_tokens, hidden]")
        checks.check_dim("residual", residual, 0, num_tokens, "tokens of x")
        checks.check_dim("residual", residual, 1, hidden, "hidden size of x")
        checks.check_same_dtype(x=x, residual=residual)
        checks.check_same_device(x=x, residual=residual)
        checks.check_last_contiguous("residual", residual)
        new_residual = torch.empty_like(x, memory_format=torch.contiguous_format)
        residual_out = new_residual if residual_out is None else residual_out
        checks.check_out("residual_out", residual_out, new_residual)
    else:
        residual_out = x
    if num_tokens == 0:
        return out, residual_out
    block = checks.next_power_of_two(hidden)
    res = residual if residual is not None else x
    _rms_norm_kernel[(num_tokens,)](
        x, res, weight, out, residual_out,
        x.stride(0), res.stride(0), out.stride(0), residual_out.stride(0),
        hidden, eps,
        HAS_RESIDUAL=residual is not None, BLOCK=block,
        num_warps=min(max(block // 512, 1), 16),
    )  # fmt: skip
    return out, residual_out


def rms_norm_ref(
    x: torch.Tensor,  # [T, hidden]
    weight: torch.Tensor,  # [hidden]
    eps: float,
    residual: torch.Tensor | None = None,  # [T, hidden]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-PyTorch reference. Returns (weight * normalized(x + residual),
    x + residual); without a residual the second is x itself."""
    if residual is not None:
        x = x + residual
    residual_out = x
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (weight * xf.to(x.dtype)), residual_out
