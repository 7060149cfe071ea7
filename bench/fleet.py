"""Colocated vs best static split vs adaptive, by simulation, at fleet sizes.

    python bench/fleet.py                                   # 8 and 64 GPUs, bisected; 1,000 GPUs at one rate
    python bench/fleet.py --gpus 8 --traces conv --window 300

For every trace and pool size: the largest request rate sustained with >= 90%
of requests meeting both SLOs (TTFT and TPOT; rejected = missed), found by
bisecting the rate scale (copies of the trace overlaid, see
tandem/sim/trace.py:scale_rate), for colocated, the best static split
(candidates around the fluid optimum, each bisected) and adaptive (the
planner). Beside it: goodput per GPU, busy fraction per role and the P/D
imbalance at that rate, and the fluid bound of adaptive over static for the
trace. 1,000-GPU pools run once per policy at the 64-GPU maximum scaled by
size (bisecting them would take hours here); their wall time is reported.
Writes bench/results/fleet-<cost>.json and .png, saving after every row.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tandem.sim import trace
from tandem.sim.command import load_cost
from tandem.sim.config import SimConfig
from tandem.sim.cost import CostModel
from tandem.sim.search import candidate_splits, find_max_rate, fluid_bound, simulate
from tandem.sim.trace import SimRequest

TRACES = {
    "conv": "../shared/traces/azure_conv_2023.csv",
    "code": "../shared/traces/azure_code_2023.csv",
    "multiturn": "synthetic:multiturn",
}
WIDTH, MAX_RUNS = [1], [7]  # set from the command line
KEEP = ("slo_attainment", "goodput_rps_per_gpu", "throughput_rps", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s",
        "tpot_p99_s", "utilization", "prefill_decode_imbalance", "flips", "requests", "rejected",
        "rejected_by_reason", "prefill_workers", "offered_rps")  # fmt: skip


def load(name: str, window_s: float, root: Path) -> list[SimRequest]:
    spec = TRACES[name]
    if spec.startswith("synthetic:"):
        reqs = trace.synthetic(spec.removeprefix("synthetic:"), seed=0, duration_s=window_s)
    else:
        reqs = trace.read(root / spec)
    return [r for r in reqs if r.arrival_s < window_s]


def row(result: dict[str, Any], wall_s: float, **extra: Any) -> dict[str, Any]:
    out = {k: result.get(k) for k in KEEP}
    out.update(extra)
    out["wall_s"] = round(wall_s, 1)
    return out


def bisect(
    cfg: SimConfig, cost: CostModel, reqs: list[SimRequest], lo: float, hi: float, tol: float
) -> tuple[Any, float]:
    t0 = time.monotonic()
    found = find_max_rate(
        lambda s: simulate(cfg, cost, reqs, s), lo=lo, hi=hi, rel_tol=tol, max_runs=MAX_RUNS[0]
    )
    return found, time.monotonic() - t0


def pool_rows(name: str, gpus: int, cost: CostModel, reqs: list[SimRequest], slo: tuple[float, float],
              guess: float, tol: float) -> list[dict[str, Any]]:  # fmt: skip
    base = SimConfig(gpus, "colocated", 0, slo[0], slo[1])
    rows = []
    lo, hi = guess * 0.7, guess * 1.2
    for policy, splits in (("colocated", [0]), ("static", candidate_splits(gpus, cost, reqs, width=WIDTH[0], exhaustive_below=0)),
                           ("adaptive", [max(1, gpus // 2)])):  # fmt: skip
        best: dict[str, Any] | None = None
        tried: list[int] = []
        todo = list(splits)
        while todo:
            p = todo.pop(0)
            tried.append(p)
            cfg = dataclasses.replace(base, policy=policy, prefill_workers=p)
            found, wall = bisect(cfg, cost, reqs, lo, hi, tol)
            r = row(found.result or {}, wall, trace=name, gpus=gpus, policy=policy, split=p,
                    max_rate_scale=found.rate_scale, max_rate_rps=found.offered_rps,
                    max_rate_rps_per_gpu=found.offered_rps / gpus, tries=found.tries)  # fmt: skip
            print(f"  {name} {gpus} GPUs {policy} {p}: max rate x{found.rate_scale:.3g} = "
                  f"{found.offered_rps / gpus:.3g} req/s/GPU ({wall:.0f}s)", flush=True)  # fmt: skip
            if best is None or r["max_rate_rps"] > best["max_rate_rps"]:
                best = r
            if not todo and policy == "static" and len(tried) < len(splits) + 3:
                # The best split at the edge of those tried: look one step further out.
                step = max(1, gpus // 32)
                edge = min(tried) - step if best["split"] == min(tried) else max(tried) + step
                if (
                    best["split"] in (min(tried), max(tried))
                    and 1 <= edge <= gpus - 1
                    and edge not in tried
                ):
                    todo.append(edge)
        assert best is not None
        best["tried_splits"] = tried if policy == "static" else None
        rows.append(best)
    return rows


def big_rows(name: str, gpus: int, cost: CostModel, reqs: list[SimRequest], slo: tuple[float, float],
             scales: dict[str, float], splits: dict[str, int]) -> list[dict[str, Any]]:  # fmt: skip
    rows = []
    for policy in ("colocated", "static", "adaptive"):
        p = 0 if policy == "colocated" else splits.get(policy, gpus // 2)
        cfg = SimConfig(gpus, policy, p, slo[0], slo[1])
        t0 = time.monotonic()
        r = simulate(cfg, cost, reqs, scales[policy])
        wall = time.monotonic() - t0
        rows.append(row(r, wall, trace=name, gpus=gpus, policy=policy, split=p, rate_scale=scales[policy],
                        note="one run at the 64-GPU maximum scaled by pool size, not bisected"))  # fmt: skip
        print(f"  {name} {gpus} GPUs {policy}: {r['requests']} requests, attainment {r['slo_attainment']:.1%} "
              f"({wall:.0f}s wall)", flush=True)  # fmt: skip
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cost", default="llama3-8b-h200")
    ap.add_argument("--gpus", default="8,64,1000")
    ap.add_argument("--traces", default="conv,code,multiturn")
    ap.add_argument("--window", type=float, default=300.0, help="seconds of each trace")
    ap.add_argument(
        "--big-window",
        type=float,
        default=100.0,
        help="seconds of each trace for pools over 64 GPUs",
    )
    ap.add_argument("--big-traces", default="conv", help="traces run at pools over 64 GPUs")
    ap.add_argument("--ttft-slo", type=float, default=2.0)
    ap.add_argument("--tpot-slo", type=float, default=0.05)
    ap.add_argument(
        "--tol", type=float, default=0.08, help="bisection stops at hi/lo - 1 below this"
    )
    ap.add_argument("--scale-test", type=int, default=0, metavar="REQUESTS",
                    help="only time one adaptive run of this many requests on the largest --gpus")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--static-width",
        type=int,
        default=1,
        help="static splits tried each side of the fluid optimum",
    )
    ap.add_argument("--max-runs", type=int, default=7, help="simulations per bisection")
    args = ap.parse_args()
    WIDTH[0], MAX_RUNS[0] = args.static_width, args.max_runs
    cost = load_cost(args.cost)
    if args.scale_test:
        return scale_test(
            cost, int(args.gpus.split(",")[-1]), args.scale_test, args.window, args.out
        )
    root = Path(__file__).resolve().parents[1]
    out = args.out or root / "bench" / "results" / f"fleet-{cost.name}.json"
    slo = (args.ttft_slo, args.tpot_slo)
    result: dict[str, Any] = {
        "bench": "fleet", "command": " ".join(sys.argv), "cost_model": cost.name, "provisional": cost.provisional,
        "slo": {"ttft_s": slo[0], "tpot_s": slo[1], "attainment": 0.9}, "window_s": args.window,
        "rate_scale": "copies of the trace overlaid (time not compressed)", "rows": [], "fluid": {},
    }  # fmt: skip
    gpus = [int(g) for g in args.gpus.split(",")]
    for name in args.traces.split(","):
        reqs = load(name, args.window, root)
        result["fluid"][name] = fluid_bound(cost, reqs)
        base_rps = len(reqs) / args.window
        guess = None
        for n in gpus:
            print(
                f"{name}: {len(reqs)} requests in {args.window:.0f}s ({base_rps:.2f} req/s), {n} GPUs",
                flush=True,
            )
            if n > 64:
                if name not in args.big_traces.split(","):
                    continue
                reqs = load(name, args.big_window, root)
                ref = [r for r in result["rows"] if r["trace"] == name and r["gpus"] == 64]
                scales = {r["policy"]: r["max_rate_scale"] * n / 64 for r in ref}
                splits = {
                    r["policy"]: round(r["split"] * n / 64)
                    for r in ref
                    if r["policy"] != "colocated"
                }
                if len(scales) < 3:
                    print("  skipped: needs the 64-GPU rows first", flush=True)
                    continue
                result["rows"] += big_rows(name, n, cost, reqs, slo, scales, splits)
            else:
                g = guess * n if guess else _fluid_guess(cost, reqs, n, args.window)
                rows = pool_rows(name, n, cost, reqs, slo, g, args.tol)
                result["rows"] += rows
                guess = max(r["max_rate_scale"] for r in rows) / n
            _save(result, out)
    _save(result, out)
    _plot(result, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def scale_test(cost: CostModel, gpus: int, count: int, window_s: float, out: Path | None) -> int:
    """Wall time of one simulation of `count` requests (the conversation trace overlaid) on `gpus`."""
    import os
    import resource

    root = Path(__file__).resolve().parents[1]
    reqs = load("conv", window_s, root)
    scale = count / len(reqs)
    cfg = SimConfig(gpus, "adaptive", gpus // 2, 2.0, 0.05)
    t0, c0 = time.monotonic(), time.process_time()
    r = simulate(cfg, cost, reqs, scale)
    wall, cpu = time.monotonic() - t0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    fig = {"bench": "sim-scale", "gpus": gpus, "requests": r["requests"], "policy": "adaptive", "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
           "load_average_at_end": os.getloadavg(),
           "requests_per_cpu_s": round(r["requests"] / cpu), "max_rss_mib": round(rss), "cpus": os.cpu_count(),
           "simulated_s": r["simulated_s"], "slo_attainment": r["slo_attainment"], "flips": r["flips"],
           "command": " ".join(sys.argv), "cost_model": cost.name}  # fmt: skip
    path = out or root / "bench" / "results" / "sim-scale.json"
    path.write_text(json.dumps(fig, indent=2) + "\n")
    print(json.dumps(fig, indent=2))
    return 0


def _fluid_guess(cost: CostModel, reqs: list[SimRequest], gpus: int, window_s: float) -> float:
    from tandem.sim.search import gpu_seconds

    p, d = gpu_seconds(cost, reqs)
    return max(0.05, 0.8 * gpus * window_s / max(p + d, 1e-9))


def _save(result: dict[str, Any], path: Path) -> None:
    for name, fluid in result["fluid"].items():
        for n in {r["gpus"] for r in result["rows"] if r["trace"] == name}:
            by = {r["policy"]: r for r in result["rows"] if r["trace"] == name and r["gpus"] == n}
            if {"static", "adaptive", "colocated"} <= set(by) and "max_rate_rps" in by["static"]:
                fluid.setdefault("measured", {})[str(n)] = {
                    "adaptive_over_static": _ratio(by["adaptive"], by["static"]),
                    "adaptive_over_colocated": _ratio(by["adaptive"], by["colocated"]),
                    "static_over_colocated": _ratio(by["static"], by["colocated"]),
                }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    x, y = a.get("max_rate_rps"), b.get("max_rate_rps")
    return x / y if x is not None and y else None


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "max_rate_rps_per_gpu" in r]
    groups = sorted({(r["trace"], r["gpus"]) for r in rows}, key=lambda g: (g[0], g[1]))
    if not groups:
        return
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, len(groups) * 1.6), 8))
    width = 0.27
    for i, policy in enumerate(("colocated", "static", "adaptive")):
        vals = [next((r["max_rate_rps_per_gpu"] for r in rows if (r["trace"], r["gpus"]) == g and r["policy"] == policy), 0)
                for g in groups]  # fmt: skip
        util = [next(((r["utilization"] or {}).get("mean", 0) for r in rows
                      if (r["trace"], r["gpus"]) == g and r["policy"] == policy), 0) for g in groups]  # fmt: skip
        xs = [k + (i - 1) * width for k in range(len(groups))]
        ax1.bar(xs, vals, width, label=policy)
        ax2.bar(xs, util, width, label=policy)
    labels = [f"{t}\n{n} GPUs" for t, n in groups]
    for ax in (ax1, ax2):
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(labels)
        ax.legend()
    slo = result["slo"]
    ax1.set_ylabel("max rate at >= 90% SLO (req/s/GPU)")
    ax2.set_ylabel("mean busy fraction at that rate")
    ax1.set_title(f"{result['cost_model']}: TTFT <= {slo['ttft_s']}s, TPOT <= {slo['tpot_s']}s"
                  + (" (PROVISIONAL cost model)" if result["provisional"] else ""))  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
