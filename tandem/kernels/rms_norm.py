"""RMSNorm, optionally fused with the residual add that precedes it
(Zhang & Sennrich, 2019). Returns (normed, new_residual)."""

from __future__ import annotations

import torch


def rms_norm_ref(
    x: torch.Tensor,  # [T, hidden]
    weight: torch.Tensor,  # [hidden]
    eps: float,
    residual: torch.Tensor | None = None,  # [T, hidden]
) -> tuple[torch.Tensor, torch.Tensor]:
    if residual is not None:
        x = x + residual
    residual_out = x
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (weight * xf.to(x.dtype)), residual_out
