"""Probe, not used by the engine: causal prefill attention over contiguous
Q/K/V with TMA descriptors and Triton's automatic warp specialization on
Hopper (`tl.range(..., warp_specialize=True)` at num_warps=4 becomes one
producer and two consumer warpgroups). Triton 3.6's pass only accepts a single
loop whose every tile is masked, Q loaded by a 2-D descriptor and no early
exit (bench/NOTES-kernels.md), hence this reduced shape of the kernel.

    PYTHONPATH=. timeout 120 python3 bench/prefill_ws_probe.py   # prints one JSON line
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor


@triton.jit
def _step(s, v, acc, m_i, l_i, qk_scale):
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    p = tl.exp2(s * qk_scale - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return acc, m_new, l_i


@triton.jit
def _ws_kernel(desc_q, desc_k, desc_v, o_ptr, qsl_ptr, qk_scale, stride_ot, stride_oh, group, n_tok,
               BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, WS: tl.constexpr, MASK_ALL: tl.constexpr, GT: tl.constexpr):
    TOK: tl.constexpr = BM // GT
    m_tile = tl.num_programs(0) - 1 - tl.program_id(0)
    b = tl.program_id(1)
    q_start = tl.load(qsl_ptr + b)
    q_len = tl.load(qsl_ptr + b + 1) - q_start
    rel = m_tile * TOK
    live = rel < q_len
    r = tl.arange(0, BM)
    if GT == 1:
        h = tl.program_id(2)
        kvh = h // group
        q = desc_q.load([q_start + rel, h * D])
        head = h + r * 0
    else:
        kvh = tl.program_id(2)
        q = desc_q.load([(kvh * n_tok + q_start + rel) * GT, 0])
        head = kvh * GT + r % GT
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, D], tl.float32)
    hi = tl.where(live, tl.minimum(q_len, rel + TOK), 0)
    full = tl.where(live, rel // BN * BN, 0)
    qrel = rel + r // GT
    col = kvh * D
    for j in tl.range(0, hi, BN, warp_specialize=WS):
        k = desc_k.load([q_start + j, col])
        s = tl.dot(q, k.T)
        if MASK_ALL:
            n = j + tl.arange(0, BN)
            s = tl.where(n[None, :] <= qrel[:, None], s, float("-inf"))
        else:
            if j >= full:
                n = j + tl.arange(0, BN)
                s = tl.where(n[None, :] <= qrel[:, None], s, float("-inf"))
        v = desc_v.load([q_start + j, col])
        acc, m_i, l_i = _step(s, v, acc, m_i, l_i, qk_scale)
    acc = acc / l_i[:, None]
    d = tl.arange(0, D)
    tok = (q_start + qrel).to(tl.int64)
    tl.store(o_ptr + tok[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :], acc.to(o_ptr.dtype.element_ty),
             mask=(qrel < q_len)[:, None])


def ws_attention(q, k, v, qsl, max_q, scale, bm=128, bn=128, warps=4, stages=2, ws=True, mask_all=False, q_packed=None):
    T, H, D = q.shape
    KVH = k.shape[1]
    G = H // KVH
    out = torch.empty_like(q)
    if q_packed is not None:  # [KVH, T, G, D] contiguous
        dq = TensorDescriptor(q_packed, [KVH * T * G, D], [D, 1], [bm, D])
        gt, tok = G, bm // G
    else:
        dq = TensorDescriptor(q, [T, H * D], [q.stride(0), 1], [bm, D])
        gt, tok = 1, bm
    dk = TensorDescriptor(k, [T, KVH * D], [k.stride(0), 1], [bn, D])
    dv = TensorDescriptor(v, [T, KVH * D], [v.stride(0), 1], [bn, D])
    grid = (math.ceil(max_q / tok), qsl.shape[0] - 1, H if gt == 1 else KVH)
    _ws_kernel[grid](dq, dk, dv, out, qsl, scale * math.log2(math.e), out.stride(0), out.stride(1), G, T,
                     BM=bm, BN=bn, D=D, WS=ws, MASK_ALL=mask_all, GT=gt, num_warps=warps, num_stages=stages)
    return out


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from kernels import DEV, DT, HEAD_DIM, HEADS, KV_HEADS, bench_ms, rel_err

    tokens = 4096
    qkv = torch.randn(tokens, HEADS + 2 * KV_HEADS, HEAD_DIM, device=DEV, dtype=DT)
    q = qkv[:, :HEADS].contiguous()
    k, v = qkv[:, HEADS : HEADS + KV_HEADS], qkv[:, HEADS + KV_HEADS :]
    qsl = torch.tensor([0, tokens], dtype=torch.int32, device=DEV)
    q_packed = q.view(tokens, KV_HEADS, HEADS // KV_HEADS, HEAD_DIM).permute(1, 0, 2, 3).contiguous()
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1).float(), k.transpose(0, 1).float(), v.transpose(0, 1).float(),
        is_causal=True, enable_gqa=True,
    ).transpose(0, 1)  # fmt: skip
    rows: list[dict[str, Any]] = []
    for packed in (True, False):
        for bn, ws in ((128, True), (64, True), (128, False)):
            cfg = {"packed": packed, "bn": bn, "ws": ws, "stages": 2, "warps": 4}

            def run(bn: int = bn, ws: bool = ws, packed: bool = packed) -> torch.Tensor:
                return ws_attention(
                    q, k, v, qsl, tokens, HEAD_DIM**-0.5, bn=bn, ws=ws, mask_all=True,
                    q_packed=q_packed if packed else None,
                )  # fmt: skip

            err = rel_err(run(), ref)
            rows.append({**cfg, "rel_err": err, "ms": bench_ms(run)})
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
