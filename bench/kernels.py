"""Kernel benchmark: ceilings, correctness, then timings on Llama-3-8B shapes.

Run on a CUDA machine (one call does everything):

    PYTHONPATH=. python3 bench/kernels.py [--quick]

1. Measures the two ceilings of this device: device-to-device copy bandwidth
   (bytes read + written, 2 GiB buffer) and bf16 matmul rate (8192^3, random).
2. Checks every Triton kernel against its plain-PyTorch reference on the GPU.
3. Times (triton.testing.do_bench, median, L2 flushed between runs) paged
   decode attention (batch 64 x 4096 and batch 1 x 32k, block 16), paged
   prefill attention (4096 tokens, causal), each over a small sweep of tile
   configurations, against torch's scaled_dot_product_attention backends on
   contiguous tensors measured in the same run; and the fused element-wise
   kernels as fractions of copy bandwidth.
Prints a table last and writes JSON to $OUT/kernels.json when OUT is set,
else to bench/results/kernels-<device>.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench, do_bench_cudagraph

from tandem.kernels.paged_decode_attention import paged_decode_attention, paged_decode_attention_ref
from tandem.kernels.paged_prefill_attention import (
    paged_prefill_attention,
    paged_prefill_attention_ref,
)
from tandem.kernels.rms_norm import rms_norm, rms_norm_ref
from tandem.kernels.rotary_store_kv import rotary_store_kv, rotary_store_kv_ref
from tandem.kernels.silu_mul import silu_mul, silu_mul_ref
from tandem.kernels.store_kv import store_kv, store_kv_ref

# Llama-3-8B attention and MLP shapes.
HEADS, KV_HEADS, HEAD_DIM, HIDDEN, INTER = 32, 8, 128, 4096, 14336
BLOCK = 16
DT = torch.bfloat16
DEV = torch.device("cuda")


def bench_ms(fn: Callable[[], object]) -> float:
    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


# ---------------------------------------------------------------- ceilings


def ceilings() -> dict[str, float]:
    n = 1 << 30  # bf16 elements: 2 GiB per buffer
    src = torch.randn(n, device=DEV, dtype=DT)
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    copy_bw = 2 * src.numel() * 2 / (ms * 1e-3)
    a = torch.randn(8192, 8192, device=DEV, dtype=DT)
    b = torch.randn(8192, 8192, device=DEV, dtype=DT)
    # Longer warm-up and more repeats: the clocks settle under a sustained matmul load.
    ms_mm = float(do_bench(lambda: a @ b, warmup=300, rep=600, return_mode="median"))
    return {"copy_bytes_per_s": copy_bw, "matmul_flops_per_s": 2 * 8192**3 / (ms_mm * 1e-3)}


# ---------------------------------------------------------------- inputs


def paged_cache(
    seq_lens: list[int], copies: int = 1, gen: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Caches with `copies` disjoint sets of shuffled block tables (to rotate
    through so that repeated runs do not hit in L2)."""
    per_seq = [math.ceil(n / BLOCK) for n in seq_lens]
    need = sum(per_seq)
    num_blocks = need * copies
    shape = (num_blocks, BLOCK, KV_HEADS, HEAD_DIM)
    k_cache = torch.randn(shape, device=DEV, dtype=DT)
    v_cache = torch.randn(shape, device=DEV, dtype=DT)
    ids = torch.randperm(num_blocks, generator=gen).tolist()
    tables = []
    for c in range(copies):
        pool = ids[c * need : (c + 1) * need]
        table = torch.zeros(len(seq_lens), max(per_seq), dtype=torch.int32)
        start = 0
        for b, count in enumerate(per_seq):
            table[b, :count] = torch.tensor(pool[start : start + count])
            start += count
        tables.append(table.to(DEV))
    return k_cache, v_cache, tables


def rotating(fns: list[Callable[[], object]]) -> Callable[[], object]:
    it = itertools.cycle(fns)
    return lambda: next(it)()


# ---------------------------------------------------------------- decode


def decode_bench(batch: int, context: int, configs: list[dict[str, Any]], copy_bw: float) -> dict[str, Any]:
    copies = max(1, math.ceil(200e6 / (batch * context * KV_HEADS * HEAD_DIM * 4)))
    k_cache, v_cache, tables = paged_cache([context] * batch, copies)
    seq_lens = torch.full((batch,), context, dtype=torch.int32, device=DEV)
    q = torch.randn(batch, HEADS, HEAD_DIM, device=DEV, dtype=DT)
    scale = HEAD_DIM**-0.5
    kv_bytes = 2 * batch * context * KV_HEADS * HEAD_DIM * 2
    nbytes = kv_bytes + 2 * q.numel() * 2

    out = paged_decode_attention(q, k_cache, v_cache, tables[0], seq_lens, scale)
    ref = paged_decode_attention_ref(
        q.float(), k_cache.float(), v_cache.float(), tables[0], seq_lens, scale
    )
    result: dict[str, Any] = {"batch": batch, "context": context, "bytes": nbytes}
    result["rel_err"] = rel_err(out, ref)
    del ref

    def ours(**cfg: Any) -> Callable[[], object]:
        return rotating(
            [
                (lambda t=t: paged_decode_attention(q, k_cache, v_cache, t, seq_lens, scale, **cfg))
                for t in tables
            ]
        )

    sweep = []
    for cfg in configs:
        try:
            ms = bench_ms(ours(**cfg))
        except Exception as exc:  # a tile config that does not compile is data, not a crash
            sweep.append({"config": cfg, "error": repr(exc)[:200]})
            continue
        sweep.append({"config": cfg, "ms": ms, "frac_copy_bw": nbytes / (ms * 1e-3) / copy_bw})
    ok = [s for s in sweep if "ms" in s]
    result["sweep"] = sweep
    result["default_ms"] = ok[0]["ms"] if ok else None
    result["best"] = min(ok, key=lambda s: s["ms"]) if ok else None
    # The default again (run-to-run spread), and replayed from a CUDA graph as
    # the engine runs it (no launch gaps, L2 not flushed between replays).
    result["default_ms_again"] = bench_ms(ours())
    result["default_graph_ms"] = float(do_bench_cudagraph(ours(), rep=100, return_mode="median"))
    result["default_graph_frac_copy_bw"] = nbytes / (result["default_graph_ms"] * 1e-3) / copy_bw
    result["sdpa"] = sdpa_decode(batch, context, q, kv_bytes, nbytes, copy_bw)
    return result


def sdpa_decode(
    batch: int, context: int, q: torch.Tensor, kv_bytes: int, nbytes: int, copy_bw: float
) -> dict[str, Any]:
    """torch SDPA on contiguous KV, one query token: GQA through enable_gqa,
    else with K/V expanded to every query head beforehand (not timed)."""
    k = torch.randn(batch, KV_HEADS, context, HEAD_DIM, device=DEV, dtype=DT)
    v = torch.randn_like(k)
    q4 = q.view(batch, HEADS, 1, HEAD_DIM)
    found = sdpa_backends(q4, k, v, causal=False, work=nbytes, per_s=copy_bw, unit="bytes")
    try:  # the default backend replayed from a CUDA graph, as ours is
        ms = float(do_bench_cudagraph(
            lambda: F.scaled_dot_product_attention(q4, k, v, enable_gqa=True), rep=100, return_mode="median"
        ))  # fmt: skip
        found["default_graph"] = {"ms": ms, "frac_bytes": nbytes / (ms * 1e-3) / copy_bw}
    except Exception as exc:
        found["default_graph"] = {"error": repr(exc)[:160]}
    return found


def sdpa_backends(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, work: float, per_s: float, unit: str
) -> dict[str, Any]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    found: dict[str, Any] = {}
    backends = {
        "default": None,
        "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
    }
    k_exp = v_exp = None
    for name, backend in backends.items():
        for gqa in (True, False):
            if not gqa and k_exp is None:
                k_exp = k.repeat_interleave(HEADS // KV_HEADS, dim=1)
                v_exp = v.repeat_interleave(HEADS // KV_HEADS, dim=1)
            kk, vv = (k, v) if gqa else (k_exp, v_exp)

            def run(kk: torch.Tensor = kk, vv: torch.Tensor = vv, gqa: bool = gqa) -> torch.Tensor:
                return F.scaled_dot_product_attention(q, kk, vv, is_causal=causal, enable_gqa=gqa)

            try:
                if backend is None:
                    ms = bench_ms(run)
                else:
                    with sdpa_kernel(backend):
                        ms = bench_ms(run)
            except Exception as exc:
                found[f"{name}{'' if gqa else '_expanded'}"] = {"error": repr(exc)[:160]}
                continue
            found[name] = {"ms": ms, "gqa": gqa, f"frac_{unit}": work / (ms * 1e-3) / per_s}
            break
    del k_exp, v_exp
    timed = [(n, r["ms"]) for n, r in found.items() if "ms" in r]
    found["best"] = min(timed, key=lambda x: x[1]) if timed else None
    return found


# ---------------------------------------------------------------- prefill


def prompt_inputs(tokens: int) -> dict[str, Any]:
    """Keyword arguments of `paged_prefill_attention` for one prompt of `tokens`:
    K and V are strided views of one qkv buffer (the model's layout), also
    stored in a shuffled paged cache."""
    qkv = torch.randn(tokens, HEADS + 2 * KV_HEADS, HEAD_DIM, device=DEV, dtype=DT)
    q = qkv[:, :HEADS].contiguous()
    k_new, v_new = qkv[:, HEADS : HEADS + KV_HEADS], qkv[:, HEADS + KV_HEADS :]
    k_cache, v_cache, tables = paged_cache([tokens])
    table = tables[0]
    slots = (table[0].long()[:, None] * BLOCK + torch.arange(BLOCK, device=DEV)).flatten()[:tokens]
    k_cache.view(-1, KV_HEADS, HEAD_DIM)[slots] = k_new
    v_cache.view(-1, KV_HEADS, HEAD_DIM)[slots] = v_new
    return {
        "q": q, "k_cache": k_cache, "v_cache": v_cache, "block_tables": table,
        "query_start_loc": torch.tensor([0, tokens], dtype=torch.int32, device=DEV),
        "seq_lens": torch.tensor([tokens], dtype=torch.int32, device=DEV),
        "scale": HEAD_DIM**-0.5, "max_query_len": tokens, "k_new": k_new, "v_new": v_new,
    }  # fmt: skip


def prefill_bench(tokens: int, configs: list[dict[str, Any]], mm_rate: float) -> dict[str, Any]:
    """One 4096-token prompt. K and V are strided views of one qkv buffer (the
    model's layout), also stored in a shuffled paged cache. Config key
    `split`: the engine's prefill call (this step's K/V rows read contiguously,
    with TMA); without it every position is gathered through the block table,
    the path that earlier context (prefix hits, earlier chunks) takes."""
    a = prompt_inputs(tokens)
    q, k_new, v_new, k_cache, v_cache = a["q"], a["k_new"], a["v_new"], a["k_cache"], a["v_cache"]
    table, starts, seq_lens, scale = a["block_tables"], a["query_start_loc"], a["seq_lens"], a["scale"]
    flops = 4 * tokens * tokens / 2 * HEADS * HEAD_DIM

    def call(cfg: dict[str, Any]) -> Callable[[], torch.Tensor]:
        kw = dict(cfg)
        new = {"k_new": k_new, "v_new": v_new} if kw.pop("split", False) else {}
        return lambda: paged_prefill_attention(
            q, k_cache, v_cache, table, starts, seq_lens, scale, max_query_len=tokens, **new, **kw
        )

    ref = paged_prefill_attention_ref(q.float(), k_cache.float(), v_cache.float(), table, starts, seq_lens, scale)
    result: dict[str, Any] = {"tokens": tokens, "flops": flops}
    sweep = []
    for cfg in configs:
        try:
            err = rel_err(call(cfg)(), ref)
            ms = bench_ms(call(cfg))
        except Exception as exc:
            sweep.append({"config": cfg, "error": repr(exc)[:200]})
            continue
        sweep.append({"config": cfg, "ms": ms, "frac_matmul": flops / (ms * 1e-3) / mm_rate, "rel_err": err})
    del ref
    ok = [s for s in sweep if "ms" in s and s["rel_err"] < BF16_TOL]
    result["sweep"] = sweep
    default = sweep[0] if "ms" in sweep[0] else None
    result["default_ms"] = default["ms"] if default else None
    result["rel_err"] = max((s["rel_err"] for s in sweep if "rel_err" in s), default=math.nan)
    paged = [s for s in sweep if "ms" in s and s["config"] == {"split": False}]
    result["paged_ms"] = paged[0]["ms"] if paged else None
    tri = [s for s in sweep if "ms" in s and s["config"] == {"split": True, "hopper": False}]
    result["triton_split_ms"] = tri[0]["ms"] if tri else None
    result["best"] = min(ok, key=lambda s: s["ms"]) if ok else None
    # SDPA on contiguous [1, heads, T, D] with the same values.
    q4 = q.transpose(0, 1).unsqueeze(0).contiguous()
    kc = k_new.transpose(0, 1).unsqueeze(0).contiguous()
    vc = v_new.transpose(0, 1).unsqueeze(0).contiguous()
    result["sdpa"] = sdpa_backends(q4, kc, vc, causal=True, work=flops, per_s=mm_rate, unit="matmul")
    return result


# ---------------------------------------------------------------- element-wise


def elementwise_bench(copy_bw: float, tokens: int = 8192) -> dict[str, Any]:
    """Fused element-wise kernels: bytes moved at the floor (each input read
    once, each output written once) over time, and the unfused torch time."""
    res: dict[str, Any] = {}

    def record(
        name: str, fused: Callable[[], object], ref: Callable[[], object], nbytes: int,
        check: Callable[[], float],
    ) -> None:  # fmt: skip
        try:
            err = check()
            ms, ms_ref = bench_ms(fused), bench_ms(ref)
        except Exception as exc:  # one broken kernel must not hide the others
            traceback.print_exc()
            res[name] = {"error": repr(exc)[:300], "rel_err": math.nan}
            return
        res[name] = {
            "tokens": tokens, "bytes": nbytes, "ms": ms, "frac_copy_bw": nbytes / (ms * 1e-3) / copy_bw,
            "torch_ms": ms_ref, "speedup_vs_torch": ms_ref / ms, "rel_err": err,
        }  # fmt: skip

    x = torch.randn(tokens, HIDDEN, device=DEV, dtype=DT)
    r = torch.randn_like(x)
    w = torch.randn(HIDDEN, device=DEV, dtype=DT)
    record(
        "rms_norm_residual",
        lambda: rms_norm(x, w, 1e-5, r), lambda: rms_norm_ref(x, w, 1e-5, r), 4 * x.numel() * 2,
        lambda: max(rel_err(a, b) for a, b in zip(rms_norm(x, w, 1e-5, r), rms_norm_ref(x, w, 1e-5, r), strict=True)),
    )  # fmt: skip

    g = torch.randn(tokens, 2 * INTER, device=DEV, dtype=DT)
    record(
        "silu_mul", lambda: silu_mul(g), lambda: silu_mul_ref(g), 3 * tokens * INTER * 2,
        lambda: rel_err(silu_mul(g), silu_mul_ref(g)),
    )  # fmt: skip

    qkv = torch.randn(tokens, HEADS + 2 * KV_HEADS, HEAD_DIM, device=DEV, dtype=DT)
    q, k, v = qkv.split([HEADS, KV_HEADS, KV_HEADS], dim=1)
    inv = 1.0 / 500000.0 ** (torch.arange(0, HEAD_DIM, 2, device=DEV, dtype=torch.float32) / HEAD_DIM)
    ang = torch.arange(tokens, device=DEV, dtype=torch.float32)[:, None] * inv[None, :]
    cos, sin = ang.cos(), ang.sin()
    positions = torch.randint(0, tokens, (tokens,), device=DEV)
    k_cache, v_cache, tables = paged_cache([tokens])
    # Every token stored, at slots scattered over shuffled blocks.
    slots = (tables[0][0].long()[:, None] * BLOCK + torch.arange(BLOCK, device=DEV)).flatten()[:tokens]
    kc2, vc2 = k_cache.clone(), v_cache.clone()

    def check_rope() -> float:
        q_out = rotary_store_kv(q, k, v, positions, cos, sin, k_cache, v_cache, slots)
        q_ref = rotary_store_kv_ref(q, k, v, positions, cos, sin, kc2, vc2, slots)
        return max(rel_err(q_out, q_ref), rel_err(k_cache, kc2), rel_err(v_cache, vc2))

    record(
        "rotary_store_kv",
        lambda: rotary_store_kv(q, k, v, positions, cos, sin, k_cache, v_cache, slots),
        lambda: rotary_store_kv_ref(q, k, v, positions, cos, sin, kc2, vc2, slots),
        2 * qkv.numel() * 2, check_rope,
    )  # fmt: skip

    def check_store() -> float:
        store_kv(k, v, k_cache, v_cache, slots)
        store_kv_ref(k, v, kc2, vc2, slots)
        return rel_err(k_cache, kc2) + rel_err(v_cache, vc2)

    record(
        "store_kv",
        lambda: store_kv(k, v, k_cache, v_cache, slots),
        lambda: store_kv_ref(k, v, kc2, vc2, slots),
        4 * k.numel() * 2, check_store,
    )  # fmt: skip
    return res


# ---------------------------------------------------------------- main


def configs(quick: bool) -> dict[str, list[dict[str, Any]]]:
    """Tile sweeps; the first entry of each is the launcher's default."""
    dec = [{}] + [
        {"block_n": bn, "num_warps": w, "num_stages": st}
        for bn, w, st in [(64, 4, 3), (64, 4, 4), (32, 4, 3), (128, 8, 3), (128, 8, 4), (64, 8, 2)]
    ] + [{"num_splits": sp, "block_n": 64, "num_warps": 4, "num_stages": 2} for sp in (2, 3)]
    dec1 = [{}] + [
        {"num_splits": sp, "block_n": bn, "num_warps": 4, "num_stages": st}
        for sp, bn, st in itertools.product((24, 33, 48), (32, 64), (2, 3))
    ]
    # Prefill: the engine's call first (split, launcher defaults: the Gluon kernel
    # on sm_90), the Triton kernel on the same split path, the all-paged path, then
    # tiles of each (bench/NOTES-kernels.md lists variants tried and dropped).
    pre: list[dict[str, Any]] = [{"split": True}, {"split": True, "hopper": False}, {"split": False}] + [
        {k: v for k, v in (("block_m", m), ("block_n", n), ("num_warps", w), ("num_stages", st)) if v}
        | {"split": True, **extra}
        for m, n, w, st, extra in [
            (None, 128, None, 3, {}), (None, 64, None, 3, {}), (None, 128, None, 2, {"pack_gqa": False}),
            (128, 64, 8, 4, {"hopper": False}), (128, 128, 8, 3, {"hopper": False, "pack_gqa": False}),
            (128, 128, 8, 3, {"tma": False}),
        ]
    ]  # fmt: skip
    if quick:
        return {"decode": dec[:2], "decode1": dec1[:2], "prefill": pre[:3]}
    return {"decode": dec, "decode1": dec1, "prefill": pre}


def versions() -> dict[str, Any]:
    return {
        "device": torch.cuda.get_device_name(),
        "sm_count": torch.cuda.get_device_properties(0).multi_processor_count,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }


def table(res: dict[str, Any]) -> str:
    c = res["ceilings"]
    lines = [
        f"device {res['versions']['device']}  torch {res['versions']['torch']}  triton {res['versions']['triton']}",
        f"ceilings: copy {c['copy_bytes_per_s'] / 1e12:.2f} TB/s, bf16 matmul {c['matmul_flops_per_s'] / 1e12:.0f} TFLOP/s",
        f"{'kernel':34} {'ms':>8} {'ceiling':>8} {'SDPA best':>18} {'ratio':>6} {'rel_err':>8}",
    ]
    for key, label in (("decode_b64_ctx4096", "decode B64 ctx4096"), ("decode_b1_ctx32k", "decode B1 ctx32768")):
        d = res[key]
        if "best" not in d or d["best"] is None:
            lines.append(f"{label:34} {d.get('error', 'no result')[:60]}")
            continue
        best, sd = d["best"], d["sdpa"]["best"]
        sd_txt = f"{sd[0]} {sd[1]:.3f}" if sd else "n/a"
        for tag, ms in (("best", best["ms"]), ("default", d["default_ms"]), ("default, graph", d["default_graph_ms"])):
            ratio = f"{sd[1] / ms:.2f}" if sd else "n/a"
            frac = d["bytes"] / (ms * 1e-3) / res["ceilings"]["copy_bytes_per_s"]
            lines.append(f"{label + ' ' + tag:34} {ms:8.3f} {frac:7.0%}B {sd_txt:>18} {ratio:>6} {d['rel_err']:8.1e}")
    p = res["prefill_4096"]
    if p.get("best"):
        best, sd = p["best"], p["sdpa"]["best"]
        sd_txt = f"{sd[0]} {sd[1]:.3f}" if sd else "n/a"
        for tag, ms in (
            ("best", best["ms"]),
            ("engine call", p["default_ms"]),
            ("split, Triton kernel", p.get("triton_split_ms")),
            ("all paged", p["paged_ms"]),
        ):
            if ms is None:
                continue
            ratio = f"{sd[1] / ms:.2f}" if sd else "n/a"
            frac = p["flops"] / (ms * 1e-3) / res["ceilings"]["matmul_flops_per_s"]
            lines.append(f"{'prefill 4096 causal ' + tag:34} {ms:8.3f} {frac:7.0%}F {sd_txt:>18} {ratio:>6} {p['rel_err']:8.1e}")
        lines.append(f"  prefill best config: {best['config']}")
    for name, e in res["elementwise"].items():
        if "ms" not in e:
            lines.append(f"{name:34} {e.get('error', '')[:60]}")
            continue
        lines.append(
            f"{name:34} {e['ms']:8.3f} {e['frac_copy_bw']:7.0%}B {'torch ' + format(e['torch_ms'], '.3f'):>18} "
            f"{e['speedup_vs_torch']:6.2f} {e['rel_err']:8.1e}"
        )
    lines.append("(B: fraction of copy bandwidth, F: fraction of matmul rate; ratio = SDPA or torch time / ours)")
    return "\n".join(lines)


#: Relative L2 error allowed for bf16 results against the float32 references.
BF16_TOL = 1.5e-2


def correctness(res: dict[str, Any]) -> dict[str, Any]:
    """Every kernel's error against its reference, checked before the timings are trusted."""
    keys = ("decode_b64_ctx4096", "decode_b1_ctx32k", "prefill_4096")
    errs = {k: res[k].get("rel_err", math.nan) for k in keys}
    errs.update({k: v["rel_err"] for k, v in res["elementwise"].items() if isinstance(v, dict)})
    failed = [k for k, e in errs.items() if not e < BF16_TOL]
    for k in failed:
        print(f"FAIL {k}: relative L2 error {errs[k]:.2e} >= {BF16_TOL}")
    return {"tolerance": BF16_TOL, "rel_err": errs, "failed": failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one config per kernel")
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = configs(args.quick)
    res: dict[str, Any] = {"versions": versions()}
    res["ceilings"] = c = ceilings()
    print("ceilings", json.dumps(c), flush=True)
    sections: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("elementwise", lambda: elementwise_bench(c["copy_bytes_per_s"])),
        ("decode_b64_ctx4096", lambda: decode_bench(64, 4096, cfg["decode"], c["copy_bytes_per_s"])),
        ("decode_b1_ctx32k", lambda: decode_bench(1, 32768, cfg["decode1"], c["copy_bytes_per_s"])),
        ("prefill_4096", lambda: prefill_bench(4096, cfg["prefill"], c["matmul_flops_per_s"])),
    ]
    for key, section in sections:
        try:
            res[key] = section()
        except Exception as exc:  # keep the other sections' figures
            traceback.print_exc()
            res[key] = {"error": repr(exc)[:500]}
        print(key, "done", flush=True)
        torch.cuda.empty_cache()
    res["checks"] = correctness(res)
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(__file__).parent / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "kernels.json" if os.environ.get("OUT") else f"kernels-{res['versions']['device'].replace(' ', '_')}.json"
    (out_dir / name).write_text(json.dumps(res, indent=2, default=str))
    for key in ("decode_b64_ctx4096", "decode_b1_ctx32k", "prefill_4096"):
        for s in res[key].get("sweep", []):
            print(key, json.dumps(s))
    try:
        print(table(res))
    except Exception:
        traceback.print_exc()
        print(json.dumps(res, default=str)[-3000:])


if __name__ == "__main__":
    main()
