"""Tile sweep of the engine's prefill call (split K/V, TMA) at 4096 causal
tokens against SDPA in the same run, plus each tile set's error on varlen
batches with cached context (the shapes of the GPU tests).

    PYTHONPATH=. python3 bench/prefill_tiles.py     # writes $OUT/prefill_tiles.json
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from kernels import (
    BLOCK,
    DEV,
    DT,
    HEAD_DIM,
    HEADS,
    ceilings,
    paged_cache,
    prefill_bench,
    rel_err,
    versions,
)

from tandem.kernels.paged_prefill_attention import (
    paged_prefill_attention,
    paged_prefill_attention_ref,
)

TILES = [
    {"split": True},
    {"split": True, "block_m": 256, "block_n": 64, "num_warps": 16, "num_stages": 3},
    {"split": True, "block_m": 256, "block_n": 64, "num_warps": 16, "num_stages": 2},
    {"split": True, "block_m": 256, "block_n": 32, "num_warps": 16, "num_stages": 3},
    {"split": True, "block_m": 256, "block_n": 32, "num_warps": 16, "num_stages": 4},
    {"split": True, "block_m": 128, "block_n": 32, "num_warps": 8, "num_stages": 4},
]


def varlen_error(cfg: dict[str, Any]) -> float:
    """Worst error over a prompt + decode row + late chunk batch (32/8 heads, d128)."""
    qlens, slens, bs = [1000, 1, 257], [1000, 600, 2000], BLOCK
    kc, vc, tables = paged_cache(slens)
    table = tables[0]
    t = sum(qlens)
    q = torch.randn(t, HEADS, HEAD_DIM, device=DEV, dtype=DT)
    starts = torch.tensor([0, *itertools.accumulate(qlens)], dtype=torch.int32, device=DEV)
    seq = torch.tensor(slens, dtype=torch.int32, device=DEV)
    rows = [(b, p) for b, (ql, n) in enumerate(zip(qlens, slens, strict=True)) for p in range(n - ql, n)]
    bi = torch.tensor([b for b, _ in rows], device=DEV)
    pi = torch.tensor([p for _, p in rows], device=DEV)
    blk = table[bi, pi // bs].long()
    k_new, v_new = kc[blk, pi % bs], vc[blk, pi % bs]
    kw = dict(cfg)
    kw.pop("split")
    out = paged_prefill_attention(
        q, kc, vc, table, starts, seq, HEAD_DIM**-0.5, max_query_len=max(qlens), k_new=k_new, v_new=v_new, **kw
    )
    ref = paged_prefill_attention_ref(q.float(), kc.float(), vc.float(), table, starts, seq, HEAD_DIM**-0.5)
    return rel_err(out, ref)


def main() -> None:
    torch.manual_seed(0)
    res: dict[str, Any] = {"versions": versions(), "ceilings": ceilings()}
    res["prefill_4096"] = prefill_bench(4096, TILES, res["ceilings"]["matmul_flops_per_s"])
    errs = []
    for cfg in TILES:
        try:
            errs.append({"config": cfg, "varlen_rel_err": varlen_error(cfg)})
        except Exception as exc:
            errs.append({"config": cfg, "error": repr(exc)[:200]})
    res["varlen"] = errs
    out = Path(os.environ.get("OUT", Path(__file__).parent / "results"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "prefill_tiles.json").write_text(json.dumps(res, indent=2, default=str))
    sd = res["prefill_4096"]["sdpa"]["best"]
    print(f"matmul {res['ceilings']['matmul_flops_per_s'] / 1e12:.0f} TFLOP/s, SDPA best {sd}")
    for s, e in zip(res["prefill_4096"]["sweep"], errs, strict=True):
        ms = s.get("ms")
        tail = f"{ms:.3f} ms {s['frac_matmul']:.0%} {sd[1] / ms:.2f}x SDPA" if ms else s.get("error")
        print(s["config"], tail, "varlen err", e.get("varlen_rel_err", e.get("error")))


if __name__ == "__main__":
    main()
