"""Rotary-embedding frequency tables, with the rope scalings Tandem supports.

Follows the definitions of RoFormer (Su et al., 2021), linear position
interpolation (Chen et al., 2023) and Llama 3's frequency-dependent scaling
(Meta, 2024), computed in float32 exactly as the reference implementations do
so that greedy outputs match token for token.
"""

from __future__ import annotations

import math

import torch

from tandem.models.config import ModelConfig


def inv_frequencies(cfg: ModelConfig) -> torch.Tensor:  # [head_dim // 2] float32
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    rs = cfg.rope_scaling
    if rs is None or rs.rope_type == "default":
        return inv_freq
    if rs.rope_type == "linear":
        return inv_freq / rs.factor
    if rs.rope_type == "llama3":
        old_len = rs.original_max_position_embeddings
        low_wavelen = old_len / rs.low_freq_factor
        high_wavelen = old_len / rs.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / rs.factor, inv_freq)
        smooth = (old_len / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled)
    raise ValueError(f"unsupported rope_type {rs.rope_type!r}")


def cos_sin_tables(
    cfg: ModelConfig, max_positions: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:  # each [max_positions, head_dim // 2] float32
    inv_freq = inv_frequencies(cfg)
    pos = torch.arange(max_positions, dtype=torch.int64).float()
    freqs = torch.outer(pos, inv_freq)
    return freqs.cos().to(device), freqs.sin().to(device)
