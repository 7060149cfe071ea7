"""Paged prefill attention: causal attention for variable-length query chunks
that also read earlier context (prefix-cache hits, earlier chunks) from the
paged cache.

Query token i of sequence s (query length L_s, context length N_s after this
step) sits at position N_s - L_s + i and attends to positions <= its own.
"""

from __future__ import annotations

import torch


def paged_prefill_attention_ref(
    q: torch.Tensor,  # [T, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    query_start_loc: torch.Tensor,  # [B + 1] int32
    seq_lens: torch.Tensor,  # [B] int32
    scale: float,
) -> torch.Tensor:  # [T, num_heads, head_dim]
    out = torch.empty_like(q)
    bs = k_cache.shape[1]
    group = q.shape[1] // k_cache.shape[2]
    starts = query_start_loc.tolist()
    for b in range(len(starts) - 1):
        q0, q1 = starts[b], starts[b + 1]
        if q1 == q0:
            continue
        n = int(seq_lens[b])
        blocks = block_tables[b, : (n + bs - 1) // bs].long()
        k = k_cache[blocks].flatten(0, 1)[:n].float().repeat_interleave(group, dim=1)
        v = v_cache[blocks].flatten(0, 1)[:n].float().repeat_interleave(group, dim=1)
        qs = q[q0:q1].float()  # [L, h, d]
        scores = torch.einsum("lhd,nhd->hln", qs, k) * scale
        qpos = torch.arange(n - (q1 - q0), n, device=q.device)
        kpos = torch.arange(n, device=q.device)
        scores.masked_fill_(kpos[None, None, :] > qpos[None, :, None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[q0:q1] = torch.einsum("hln,nhd->lhd", probs, v).to(q.dtype)
    return out
