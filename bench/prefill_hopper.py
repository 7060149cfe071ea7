"""The Hopper (Gluon, warp-specialized) prefill kernel against the Triton
kernel and SDPA in one run: errors on varlen batches with cached context (bf16
and fp16, packed and unpacked heads), then 4096 causal tokens (32/8 heads,
d128, bf16) per knob set.
Each tile set runs in a child process with a time limit, so a kernel that
hangs costs one entry, not the run.

    PYTHONPATH=. python3 bench/prefill_hopper.py     # writes $OUT/prefill_hopper.json
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from kernels import (
    BF16_TOL,
    BLOCK,
    DEV,
    HEAD_DIM,
    HEADS,
    KV_HEADS,
    bench_ms,
    ceilings,
    paged_cache,
    prompt_inputs,
    rel_err,
    sdpa_backends,
    versions,
)

from tandem.kernels.paged_prefill_attention import (
    paged_prefill_attention,
    paged_prefill_attention_ref,
)
from tandem.kernels.prefill_attention_hopper import DEFAULT_TILES, prefill_attention_hopper

# Launcher keywords of the warp-specialized kernel; the first entry is its default.
TILES: list[dict[str, Any]] = [
    {},
    {"stages": 3},
    {"block_n": 64, "stages": 3},
    {"block_n": 64, "stages": 4},
    {"consumer_regs": 232, "producer_regs": 40},
]


def varlen_case(dtype: torch.dtype, tiles: dict[str, Any], pack: bool) -> float:
    """A prompt with a prefix hit, a decode row and a late chunk, each reading context from the cache."""
    qlens, slens = [1000, 1, 257, 64], [1300, 600, 2000, 64]
    kc, vc, tables = paged_cache(slens)
    kc, vc = kc.to(dtype), vc.to(dtype)
    table = tables[0]
    t = sum(qlens)
    q = torch.randn(t, HEADS, HEAD_DIM, device=DEV, dtype=dtype)
    starts = torch.tensor([0, *itertools.accumulate(qlens)], dtype=torch.int32, device=DEV)
    seq = torch.tensor(slens, dtype=torch.int32, device=DEV)
    rows = [
        (b, p) for b, (ql, n) in enumerate(zip(qlens, slens, strict=True)) for p in range(n - ql, n)
    ]
    bi = torch.tensor([b for b, _ in rows], device=DEV)
    pi = torch.tensor([p for _, p in rows], device=DEV)
    blk = table[bi, pi // BLOCK].long()
    # K/V rows as strided views of one qkv-like buffer, as the model passes them.
    qkv = torch.full((t, HEADS + 2 * KV_HEADS, HEAD_DIM), float("nan"), device=DEV, dtype=dtype)
    qkv[:, HEADS : HEADS + KV_HEADS] = kc[blk, pi % BLOCK]
    qkv[:, HEADS + KV_HEADS :] = vc[blk, pi % BLOCK]
    k_new, v_new = qkv[:, HEADS : HEADS + KV_HEADS], qkv[:, HEADS + KV_HEADS :]
    out = prefill_attention_hopper(
        q, kc, vc, table, starts, seq, HEAD_DIM**-0.5, max_query_len=max(qlens), k_new=k_new, v_new=v_new,
        pack_gqa=pack, **tiles,
    )  # fmt: skip
    ref = paged_prefill_attention_ref(
        q.float(), kc.float(), vc.float(), table, starts, seq, HEAD_DIM**-0.5
    )
    return rel_err(out, ref)


def one(tiles: dict[str, Any], tokens: int) -> dict[str, Any]:
    """Child process: errors and the 4096-token time of one tile set."""
    torch.manual_seed(0)
    res: dict[str, Any] = {"tiles": tiles}
    errs = {}
    for dtype, pack in ((torch.bfloat16, True), (torch.float16, True), (torch.bfloat16, False)):
        errs[f"{str(dtype).split('.')[-1]}{'' if pack else '_unpacked'}"] = varlen_case(
            dtype, tiles, pack
        )
    res["varlen_rel_err"] = errs
    a = prompt_inputs(tokens)

    def run() -> torch.Tensor:
        return prefill_attention_hopper(**a, **tiles)

    base = paged_prefill_attention(**a, hopper=False)  # the Triton kernel (split, TMA)
    res["vs_triton_rel_err"] = rel_err(run(), base.float())
    res["ms"] = bench_ms(run)
    return res


def label(tiles: dict[str, Any]) -> str:
    full = {"block_n": DEFAULT_TILES[0], "stages": DEFAULT_TILES[1], **tiles}
    return "128x" + " ".join(f"{v}" if k == "block_n" else f"{k}={v}" for k, v in full.items())


def main() -> None:
    tokens = 4096
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        print(json.dumps(one(json.loads(sys.argv[2]), tokens)))
        return
    torch.manual_seed(0)
    res: dict[str, Any] = {"versions": versions(), "ceilings": ceilings()}
    mm = res["ceilings"]["matmul_flops_per_s"]
    flops = 4 * tokens * tokens / 2 * HEADS * HEAD_DIM
    res["tokens"], res["flops"] = tokens, flops
    runs = []
    for tiles in TILES:
        arg = json.dumps(tiles)
        try:
            p = subprocess.run(
                [sys.executable, __file__, "--one", arg],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if p.returncode != 0:
                runs.append({"tiles": tiles, "error": p.stderr[-1500:]})
            else:
                r = json.loads(p.stdout.strip().splitlines()[-1])
                r["frac_matmul"] = flops / (r["ms"] * 1e-3) / mm
                runs.append(r)
        except subprocess.TimeoutExpired:
            runs.append({"tiles": tiles, "error": "timed out after 120 s (hang)"})
        print(json.dumps(runs[-1])[:600], flush=True)
    res["hopper"] = runs
    a = prompt_inputs(tokens)
    triton_ms = bench_ms(lambda: paged_prefill_attention(**a, hopper=False))
    res["triton_split_tma"] = {"ms": triton_ms, "frac_matmul": flops / (triton_ms * 1e-3) / mm}
    q4 = a["q"].transpose(0, 1).unsqueeze(0).contiguous()
    k4 = a["k_new"].transpose(0, 1).unsqueeze(0).contiguous()
    v4 = a["v_new"].transpose(0, 1).unsqueeze(0).contiguous()
    res["sdpa"] = sdpa_backends(q4, k4, v4, causal=True, work=flops, per_s=mm, unit="matmul")
    sd = res["sdpa"]["default"]["ms"]
    print(f"\n{'kernel':<34}{'ms':>8}{'of matmul':>11}{'SDPA default / ours':>21}  errors")
    for r in runs:
        if "ms" in r:
            errs = " ".join(f"{k}={v:.1e}" for k, v in r["varlen_rel_err"].items())
            ok = max(r["varlen_rel_err"].values()) < BF16_TOL
            print(f"{'gluon ' + label(r['tiles']):<34}{r['ms']:8.3f}{r['frac_matmul']:11.1%}"
                  f"{sd / r['ms']:20.2f}x  {errs} vs_triton={r['vs_triton_rel_err']:.1e} {'ok' if ok else 'FAIL'}")  # fmt: skip
        else:
            print(f"{'gluon ' + label(r['tiles']):<34}  error: {r['error'][-300:]}")
    print(f"{'triton split+TMA (current default)':<34}{triton_ms:8.3f}{res['triton_split_tma']['frac_matmul']:11.1%}"
          f"{sd / triton_ms:20.2f}x")  # fmt: skip
    for name, v in res["sdpa"].items():
        if isinstance(v, dict) and "ms" in v:
            print(f"{'sdpa ' + name:<34}{v['ms']:8.3f}{v['frac_matmul']:11.1%}")
    out = Path(os.environ.get("OUT", "bench/results")) / "prefill_hopper.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
