"""Rotary position embedding (Su et al., 2021), GPT-NeoX style (rotate halves),
as Llama, Mistral and Qwen use it. `cos_sin` holds precomputed
[max_position, head_dim] cos and sin tables (rope scaling already applied)."""

from __future__ import annotations

import torch


def rotary_ref(
    x: torch.Tensor,  # [T, heads, head_dim]
    positions: torch.Tensor,  # [T] int64
    cos: torch.Tensor,  # [max_pos, head_dim // 2] float32
    sin: torch.Tensor,
) -> torch.Tensor:
    c = cos[positions].unsqueeze(1)  # [T, 1, d/2]
    s = sin[positions].unsqueeze(1)
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)
