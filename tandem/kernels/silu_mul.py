"""SwiGLU activation: silu(gate) * up over a fused [T, 2 * inter] projection."""

from __future__ import annotations

import torch


def silu_mul_ref(x: torch.Tensor) -> torch.Tensor:  # [T, 2 * inter] -> [T, inter]
    gate, up = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up
