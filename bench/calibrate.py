"""Calibrate the fleet simulator's worker cost model with the engine itself.

    python bench/calibrate.py --device cpu                       # tiny model, this machine
    python bench/calibrate.py --device cuda --shape llama3-8b    # on a GPU (about 3-4 minutes)
    python bench/calibrate.py --derive-h200-from bench/results/engine-llama3-8b-h100.json

Measures a grid of engine steps (prefill: new tokens x cached context through
the prefix cache; decode: batch x context per sequence, CUDA graphs as the
engine uses them), each after a warm-up of the same shape, timed by the
engine's own step clock (it synchronizes the device), median of repeats.
Fits `tandem/sim/cost.py`'s linear terms by least squares (relative error)
and writes the fit's error per term, the device's ceilings (matmul rate,
copy bandwidth, memory) and the physical checks. `--derive-h200-from` writes
the clearly labelled provisional H200 model used until a GPU calibration
exists: the H100 engine figures, decode terms scaled by the HBM bandwidth
ratio (4.8 / 3.35 TB/s), prefill terms unchanged (same dense bf16 peak).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tandem.sim.cost import Ceilings, CostModel, Transport
from tandem.sim.fit import least_squares_bounded

RESULTS = Path(__file__).parent / "results"
ROUTER_REJOIN_S = 2.0  # the router's Load poll interval (tandem/router/discovery.py): a flipped worker rejoins within it
H200_OVER_H100_BANDWIDTH = 4.8 / 3.35  # HBM3e vs HBM3 spec sheets
H200_MEMORY_BYTES = 141 * 10**9

GRIDS: dict[str, dict[str, list[int]]] = {
    "cpu": {"prefill_new": [16, 64, 256, 512], "prefill_ctx": [0, 256, 1024],
            "decode_batch": [1, 4, 16, 32], "decode_ctx": [64, 256, 1024], "max_tokens": [32768]},
    "cuda": {"prefill_new": [256, 1024, 2048, 4096, 8192], "prefill_ctx": [0, 2048, 8192],
             "decode_batch": [1, 8, 32, 64, 128], "decode_ctx": [512, 2048, 8192], "max_tokens": [262144]},
}  # fmt: skip


def prefill_rows(n: float, c: float, attn: float | None = None) -> list[float]:
    """A step of n new tokens after c cached ones; `attn` when the step held several prompts."""
    return [1.0, float(n), attn if attn is not None else n * (c + n / 2)]


def decode_rows(b: int, ctx: float) -> list[float]:
    return [1.0, float(b), ctx]


def fit_terms(
    points: dict[str, list[dict[str, float]]], floors: dict[str, float]
) -> tuple[dict[str, float], dict[str, float]]:
    """Least squares on the grid, each term held at or above its physical floor
    (the matmul limit per token, reading the weights and each context token's KV;
    0 for the others), with the fit's relative error per step kind."""
    pre, pre_held = least_squares_bounded(
        [prefill_rows(p["new"], p["ctx"], p.get("attn")) for p in points["prefill"]],
        [p["seconds"] for p in points["prefill"]],
        [0.0, floors["prefill_per_token_s"], floors.get("prefill_per_attn_s", 0.0)],
    )
    dec, dec_held = least_squares_bounded(
        [decode_rows(int(p["batch"]), p["context"]) for p in points["decode"]],
        [p["seconds"] for p in points["decode"]],
        [floors["decode_base_s"], 0.0, floors["decode_per_ctx_token_s"]],
    )
    names = ("prefill_base_s", "prefill_per_token_s", "prefill_per_attn_s", "decode_base_s",
             "decode_per_seq_s", "decode_per_ctx_token_s")  # fmt: skip
    terms = dict(zip(names, pre.coefficients + dec.coefficients, strict=True))
    errors: dict[str, float] = {
        "prefill_rel_error_mean": pre.rel_error_mean, "prefill_rel_error_max": pre.rel_error_max,
        "decode_rel_error_mean": dec.rel_error_mean, "decode_rel_error_max": dec.rel_error_max,
    }  # fmt: skip
    for i in pre_held:
        errors[f"{names[i]}_held_at_floor"] = 1.0
    for i in dec_held:
        errors[f"{names[3 + i]}_held_at_floor"] = 1.0
    return terms, errors


def floors_of(m: dict[str, Any]) -> dict[str, float]:
    c = m["ceilings"]
    out = {
        "prefill_per_token_s": m["flops_per_token"] / c["matmul_flops"],
        "decode_base_s": m["weight_bytes"] / c["memory_bytes_per_s"],
        "decode_per_ctx_token_s": m["kv_bytes_per_token"] / c["memory_bytes_per_s"],
    }
    if "attn_flops_per_pair" in m:
        out["prefill_per_attn_s"] = m["attn_flops_per_pair"] / c["matmul_flops"]
    return out


# ----- measurement (torch imported only here) ---------------------------------


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import engine as engine_bench  # bench/engine.py: shapes, ceilings, parameter counts
    import torch

    from tandem.sampling import SamplingParams
    from tandem.worker.config import EngineConfig
    from tandem.worker.engine import Engine

    device = torch.device(args.device)
    grid = GRIDS[device.type]
    if args.shape == "tiny":
        from tandem.models.tiny import ensure_tiny_model

        model_dir = ensure_tiny_model(Path(tempfile.mkdtemp(prefix="tandem-calib-")) / "tiny")
        cfg = json.loads((model_dir / "config.json").read_text())
        load_format = "safetensors"
    else:
        model_dir = engine_bench.write_model_dir(args.shape)
        cfg = engine_bench.SHAPES[args.shape]
        load_format = "dummy"
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype_bytes = torch.finfo(dtype).bits // 8
    max_new = max(grid["prefill_new"])
    max_len = min(cfg["max_position_embeddings"], 16384)
    budget_tokens = max(max_new, 2048)
    if device.type == "cuda":
        c = engine_bench.ceilings(device)
        ceil = {"matmul_flops": c["bf16_matmul_flops"], "memory_bytes_per_s": c["copy_bytes_per_s"]}
    else:
        ceil = cpu_ceilings(torch)
    t0 = time.perf_counter()
    eng = Engine(EngineConfig(
        str(model_dir), dtype=str(dtype).removeprefix("torch."), device=args.device, load_format=load_format,
        max_model_len=max_len, max_num_batched_tokens=budget_tokens, max_num_seqs=max(grid["decode_batch"]),
        cuda_graph_max_batch=max(grid["decode_batch"]) if device.type == "cuda" else 0,
        enable_prefix_caching=True, num_kv_blocks=grid["max_tokens"][0] // 16 + 64,
    ))  # fmt: skip
    start_s = time.perf_counter() - t0
    vocab = cfg["vocab_size"]
    gen = torch.Generator().manual_seed(0)
    counter = iter(range(10**9))

    def prompt(n: int) -> list[int]:
        return torch.randint(10, vocab, (n,), generator=gen).tolist()

    def run(prompts: list[list[int]], new: int) -> list[tuple[str, int, int, float]]:
        p = SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True)
        for ids in prompts:
            eng.add_request(f"r{next(counter)}", ids, p)
        steps = []
        while eng.has_work():
            eng.step()
            st = eng.last_step
            if st is not None:
                steps.append((st.phase, st.num_tokens, st.num_seqs, st.seconds))
        return steps

    prefill = []
    for c in grid["prefill_ctx"]:
        for n in grid["prefill_new"]:
            if c + n + 1 > max_len:
                continue
            times = []
            for rep in range(args.repeats + 1):  # the first is the warm-up of this shape
                head = prompt(c)
                if c:
                    run([head + prompt(1)], 1)  # puts the context in the prefix cache
                steps = run([head + prompt(n)], 1)
                if rep:
                    times.append(steps[0][3])
            # The least of the repeats: other processes on the host only ever add time.
            prefill.append({"new": n, "ctx": c, "seconds": min(times)})
            print(f"  prefill new={n} ctx={c}: {prefill[-1]['seconds'] * 1e3:.2f} ms", flush=True)
    decode = []
    for c in grid["decode_ctx"]:
        for b in grid["decode_batch"]:
            # Early prompts decode while later ones still prefill (mixed steps): ask for enough
            # tokens that the whole batch then decodes `decode_steps` steps together.
            new = args.decode_steps + -(-b * c // budget_tokens) + 2
            if b * (c + new) > grid["max_tokens"][0] or c + new + 1 > max_len:
                continue
            run([prompt(c) for _ in range(b)], new)  # warm-up: graphs, kernels of this shape
            steps = run([prompt(c) for _ in range(b)], new)
            dec = [s[3] for s in steps if s[0] == "decode" and s[2] == b][-args.decode_steps :]
            decode.append({"batch": b, "ctx_per_seq": c, "context": b * (c + new - args.decode_steps / 2),
                           "seconds": statistics.median(dec)})  # fmt: skip
            print(f"  decode batch={b} ctx={c}: {decode[-1]['seconds'] * 1e3:.2f} ms", flush=True)
    t1 = time.perf_counter()
    eng.set_role("prefill")
    eng.set_role("both")
    set_role_s = (time.perf_counter() - t1) / 2
    counts = engine_bench.param_counts(cfg)
    weight_bytes = (counts["body"] + counts["lm_head"]) * dtype_bytes
    kv_per_token = (
        2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * cfg["head_dim"] * dtype_bytes
    )
    if device.type == "cuda":
        mem = torch.cuda.get_device_properties(0).total_memory
        budget = (
            int((mem - weight_bytes) * 0.85) - 2 * 2**30
        )  # the engine's own sizing rule, on an empty device
    else:
        mem = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        budget = 256 * 2**20  # the engine's CPU default
    load_read_s = (
        0.0 if load_format == "safetensors" else weight_bytes / (args.load_read_gbps * 1e9)
    )
    return {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else (platform.processor() or "cpu"),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "points": {"prefill": prefill, "decode": decode},
        "ceilings": {**ceil, "memory_bytes": mem},
        "weight_bytes": weight_bytes, "kv_bytes_per_token": kv_per_token,
        "flops_per_token": 2.0 * counts["body"], "kv_capacity_tokens": budget // kv_per_token,
        "max_num_batched_tokens": 8192 if device.type == "cuda" else 2048,
        "max_num_seqs": 256 if device.type == "cuda" else 128,
        "layers": cfg["num_hidden_layers"], "engine_start_s": start_s,
        "attn_flops_per_pair": 4 * cfg["num_hidden_layers"] * cfg["num_attention_heads"] * cfg["head_dim"], "model_load_s": start_s + load_read_s,
        "role_flip_s": set_role_s + ROUTER_REJOIN_S,
    }  # fmt: skip


def cpu_ceilings(torch: Any) -> dict[str, float]:
    n = 64 * 2**20  # 256 MiB of float32 per buffer: beyond the caches
    src = torch.randn(n)
    dst = torch.empty_like(src)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    copy = 2 * 4 * n / min(times)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return {"memory_bytes_per_s": copy, "matmul_flops": 2 * 1024**3 / min(times)}


def transports_for(device_type: str) -> list[Transport]:
    vm = json.loads((RESULTS / "kv_transfer-vm.json").read_text())
    best: dict[str, float] = {}
    for f in vm["figures"]:
        if f["shape"] == "llama3-8b-4k" and f["transport"] in ("grpc", "shm"):
            best[f["transport"]] = max(best.get(f["transport"], 0.0), f["gb_per_s"] * 1e9)
    out = [Transport("grpc", best["grpc"], 0.002), Transport("shm", best["shm"], 0.001)]
    if device_type == "cuda":
        # Nominal, not measured here: NVLink 4 between GPUs of one node (450 GB/s a direction), two thirds of it.
        out.append(Transport("cuda_ipc", 300e9, 50e-6))
    return out


def build(m: dict[str, Any], name: str, device_type: str, provisional: str = "") -> dict[str, Any]:
    terms, errors = fit_terms(m["points"], floors_of(m))
    ceil = m["ceilings"]
    cost = CostModel(
        name=name, device=m["device"], **terms,
        kv_bytes_per_token=m["kv_bytes_per_token"], weight_bytes=m["weight_bytes"],
        flops_per_token=m["flops_per_token"], kv_capacity_tokens=int(m["kv_capacity_tokens"]),
        max_num_batched_tokens=m["max_num_batched_tokens"], max_num_seqs=m["max_num_seqs"],
        model_load_s=m["model_load_s"], role_flip_s=m["role_flip_s"],
        ceilings=Ceilings(ceil["matmul_flops"], ceil["memory_bytes_per_s"], int(ceil["memory_bytes"])),
        transports=tuple(transports_for(device_type)), provisional=provisional, fit_error=errors,
        layers=int(m["layers"]),
    )  # fmt: skip
    return {"bench": "calibrate", "cost": cost.to_dict(), "violations": cost.violations(),
            "measurements": m, "command": " ".join(sys.argv)}  # fmt: skip


def derive_h200(h100_path: Path) -> dict[str, Any]:
    """The provisional H200 model from the H100 engine benchmark's figures."""
    h = json.loads(h100_path.read_text())
    rows = h["tandem"] + h["decode_vs_floor"]
    decode = [{"batch": r["batch"], "context": r["batch"] * r["decode_mean_context"],
               "seconds": r["decode_step_s"] / H200_OVER_H100_BANDWIDTH} for r in rows]  # fmt: skip
    max_batched = (
        8192  # bench/engine.py ran with this token budget: a batch of prompts fills whole steps
    )
    prefill = []
    for r in [*rows, h["prefill_4k"]]:
        tokens = r["batch"] * r["prompt"]
        steps = max(1, -(-tokens // max_batched))
        prefill.append({"new": tokens / steps, "ctx": 0, "seconds": r["prefill_seconds"] / steps,
                        "attn": r["batch"] * r["prompt"] ** 2 / 2 / steps})  # fmt: skip
    shape = {"weights": h["memory"]["weights_bytes"]}
    kv_per_token = 2 * 32 * 8 * 128 * 2
    budget = int((H200_MEMORY_BYTES - shape["weights"]) * 0.85) - 2 * 2**30
    m = {
        "device": "NVIDIA H200 (provisional: derived from H100 figures)",
        "points": {"prefill": prefill, "decode": decode},
        "ceilings": {"matmul_flops": h["ceilings"]["bf16_matmul_flops"],
                     "memory_bytes_per_s": h["ceilings"]["copy_bytes_per_s"] * H200_OVER_H100_BANDWIDTH,
                     "memory_bytes": H200_MEMORY_BYTES},
        "weight_bytes": 16060522496 - 128256 * 4096 * 2, "kv_bytes_per_token": kv_per_token,
        "flops_per_token": 2.0 * (16060522496 / 2 - 2 * 128256 * 4096), "kv_capacity_tokens": budget // kv_per_token,
        "max_num_batched_tokens": max_batched, "max_num_seqs": 256, "layers": 32,
        "model_load_s": 20.0, "role_flip_s": 0.5 + ROUTER_REJOIN_S,
    }  # fmt: skip
    m["attn_flops_per_pair"] = (
        4 * 32 * 32 * 128
    )  # q k^T and p v: 2 x 2 flops per layer, head and dim
    out = build(m, "llama3-8b-h200-provisional", "cuda",
                provisional=f"derived from {h100_path.name} (H100 80GB); decode terms / {H200_OVER_H100_BANDWIDTH:.3f} "
                "(HBM bandwidth ratio), prefill terms unchanged; attention per pair at least its FLOPs at the "
                "matmul rate (the H100 figures do not vary cached context); model load 20 s and flip 0.5 s "
                "are nominal")  # fmt: skip
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument(
        "--shape", default=None, help="tiny (default on cpu) or llama3-8b (default on cuda)"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--decode-steps", type=int, default=8)
    ap.add_argument(
        "--load-read-gbps",
        type=float,
        default=2.0,
        help="weight read rate for a real load (dummy weights)",
    )
    ap.add_argument("--derive-h200-from", type=Path, default=None)
    ap.add_argument(
        "--refit", type=Path, default=None, help="fit again from a calibration JSON's measurements"
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.refit:
        old = json.loads(args.refit.read_text())
        m, c = old["measurements"], old["cost"]
        result = build(m, c["name"], "cuda" if "cuda_ipc" in {t["name"] for t in c["transports"]} else "cpu",
                       c.get("provisional", ""))  # fmt: skip
        result["command"] = old.get("command", "") + f" (refit: {' '.join(sys.argv)})"
        name = args.refit.stem.removeprefix("calibration-")
    elif args.derive_h200_from:
        result = derive_h200(args.derive_h200_from)
        name = "llama3-8b-h200-provisional"
    else:
        args.shape = args.shape or ("tiny" if args.device == "cpu" else "llama3-8b")
        name = f"{args.shape}-{args.device}"
        m = measure(args)
        result = build(m, f"{args.shape}-{m['device']}", args.device)
    out = args.out or (
        Path(os.environ["OUT"]) / f"calibration-{name}.json"
        if os.environ.get("OUT")
        else RESULTS / f"calibration-{name}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    c = result["cost"]
    print(f"\n{c['name']}: prefill {c['prefill_base_s'] * 1e3:.3f} ms + {c['prefill_per_token_s'] * 1e6:.3f} us/token "
          f"+ {c['prefill_per_attn_s'] * 1e12:.3f} ps/pair; decode {c['decode_base_s'] * 1e3:.3f} ms + "
          f"{c['decode_per_seq_s'] * 1e6:.2f} us/seq + {c['decode_per_ctx_token_s'] * 1e9:.3f} ns/ctx token")  # fmt: skip
    print("fit error:", {k: round(v, 4) for k, v in c["fit_error"].items()})
    print("physical checks:", result["violations"] or "all within the device's ceilings")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
