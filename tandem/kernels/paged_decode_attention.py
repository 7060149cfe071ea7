"""Paged decode attention: one query token per sequence over its paged KV.

Reference implementation: gathers each sequence's blocks and runs softmax
attention in float32. GQA: query head h reads KV head h // (num_heads // num_kv_heads).
"""

from __future__ import annotations

import torch


def paged_decode_attention_ref(
    q: torch.Tensor,  # [B, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    seq_lens: torch.Tensor,  # [B] int32
    scale: float,
) -> torch.Tensor:  # [B, num_heads, head_dim]
    out = torch.empty_like(q)
    bs = k_cache.shape[1]
    group = q.shape[1] // k_cache.shape[2]
    for b in range(q.shape[0]):
        n = int(seq_lens[b])
        blocks = block_tables[b, : (n + bs - 1) // bs].long()
        k = k_cache[blocks].flatten(0, 1)[:n].float()  # [n, kvh, d]
        v = v_cache[blocks].flatten(0, 1)[:n].float()
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,nhd->hn", q[b].float(), k) * scale
        probs = torch.softmax(scores, dim=-1)
        out[b] = torch.einsum("hn,nhd->hd", probs, v).to(q.dtype)
    return out
