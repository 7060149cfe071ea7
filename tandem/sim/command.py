"""`tandem sim`: simulate a pool on a trace and write the figures as JSON (+ PNG)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from tandem.sim import cost as cost_model
from tandem.sim import trace
from tandem.sim.config import POLICIES, SimConfig
from tandem.sim.progress import Progress
from tandem.sim.search import best_static, find_max_rate, fluid_bound, simulate

DEFAULT_COST = "llama3-8b-h200"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("sim", help="simulate a pool of workers on a request trace")
    p.add_argument("--trace", required=True,
                   help="Azure 2023 .csv, Mooncake .jsonl, or synthetic:multiturn|shift|steady")  # fmt: skip
    p.add_argument("--gpus", type=int, required=True)
    p.add_argument("--policy", choices=POLICIES, required=True)
    p.add_argument(
        "--ratio",
        default=None,
        help="P:D split (static; adaptive's start). Static without it searches",
    )
    p.add_argument(
        "--cost",
        default=DEFAULT_COST,
        help=f"a calibration JSON, or a built-in name ({DEFAULT_COST})",
    )
    p.add_argument("--ttft-slo", type=float, default=2.0, help="seconds (default 2)")
    p.add_argument("--tpot-slo", type=float, default=0.1, help="seconds (default 0.1)")
    p.add_argument(
        "--rate-scale", type=float, default=1.0, help="arrival rate multiplier (2 = twice as fast)"
    )
    p.add_argument(
        "--find-max-rate", action="store_true", help="bisect --rate-scale for >= 90%% attainment"
    )
    p.add_argument(
        "--max-requests", type=int, default=None, help="the first N requests of the trace"
    )
    p.add_argument("--seed", type=int, default=0, help="synthetic traces")
    p.add_argument("--duration", type=float, default=None, help="synthetic traces: seconds")
    p.add_argument(
        "--save-trace", default=None, help="write the (synthetic) trace as Mooncake JSONL"
    )
    p.add_argument(
        "--interval", type=float, default=15.0, help="planner window and period, seconds"
    )
    p.add_argument("--transport", default="auto", help="auto, or a transport of the cost model")
    p.add_argument(
        "--shed",
        action="store_true",
        help="deadline admission: the TTFT SLO is every request's deadline",
    )
    p.add_argument(
        "--progress", action="store_true", help="progress bar even when stderr is not a terminal"
    )
    p.add_argument("--out", required=True, help="FILE.json (a PNG of the run is written beside it)")
    p.set_defaults(func=_run)


def load_trace(spec: str, seed: int = 0, duration: float | None = None) -> list[trace.SimRequest]:
    if spec.startswith("synthetic:"):
        return trace.synthetic(spec.removeprefix("synthetic:"), seed, duration)
    return trace.read(spec)


def load_cost(spec: str) -> cost_model.CostModel:
    return cost_model.load(spec) if spec.endswith(".json") else cost_model.builtin(spec)


def parse_ratio(text: str, gpus: int) -> int:
    try:
        p, d = (int(x) for x in text.split(":"))
    except ValueError:
        raise ValueError(f"--ratio must be P:D with whole numbers, got {text!r}") from None
    if p < 1 or d < 1 or p + d != gpus:
        raise ValueError(f"--ratio {text} must split the {gpus} GPUs (P + D = {gpus}, both >= 1)")
    return p


def _run(args: argparse.Namespace) -> int:
    try:
        reqs = load_trace(args.trace, args.seed, args.duration)
        cost = load_cost(args.cost)
        prefill = parse_ratio(args.ratio, args.gpus) if args.ratio else max(1, args.gpus // 2)
        cfg = SimConfig(
            args.gpus, args.policy, prefill if args.policy != "colocated" else 0, args.ttft_slo, args.tpot_slo,
            interval_s=args.interval, transport=args.transport, shed=args.shed,
        )  # fmt: skip
        if args.transport != "auto":
            cost.transport(args.transport)
    except (ValueError, OSError) as exc:
        print(f"tandem sim: {exc}", file=sys.stderr)
        return 2
    if args.max_requests:
        reqs = reqs[: args.max_requests]
    if args.save_trace:
        trace.write_mooncake(reqs, args.save_trace)
    if cost.provisional:
        print(f"cost model {cost.name} is PROVISIONAL: {cost.provisional}", file=sys.stderr)
    t0 = time.monotonic()
    result = run(cfg, cost, reqs, args.rate_scale, args.find_max_rate, search=args.policy == "static" and not args.ratio,
                 progress=args.progress)  # fmt: skip
    result["wall_s"] = time.monotonic() - t0
    result["trace"] = args.trace
    result["cost_model"] = {
        "name": cost.name,
        "device": cost.device,
        "provisional": cost.provisional,
    }
    result["fluid_bound"] = fluid_bound(cost, reqs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    from tandem.sim.plot import plot_run

    plot_run(result, str(out.with_suffix(".png")))
    print(_line(result))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def run(cfg: SimConfig, cost: cost_model.CostModel, reqs: list[trace.SimRequest], rate_scale: float,
        max_rate: bool, search: bool, progress: bool = False) -> dict[str, Any]:  # fmt: skip
    def once(scale: float) -> dict[str, Any]:
        if search:
            return best_static(cfg, cost, reqs, scale)
        bar = Progress(f"{cfg.policy} x{scale:.3g}", True if progress else None)
        r = simulate(cfg, cost, reqs, scale, bar)
        bar.close()
        return r

    if not max_rate:
        return once(rate_scale)
    found = find_max_rate(once, lo=rate_scale / 4, hi=rate_scale)
    result = dict(found.result or {"policy": cfg.policy, "gpus": cfg.gpus, "slo_attainment": 0.0})
    result["max_rate"] = {"rate_scale": found.rate_scale, "offered_rps": found.offered_rps,
                          "offered_rps_per_gpu": found.offered_rps / cfg.gpus, "tries": found.tries}  # fmt: skip
    return result


def _line(r: dict[str, Any]) -> str:
    u = r.get("utilization", {})
    head = f"{r['policy']} {r['gpus']} GPUs"
    if r.get("prefill_workers"):
        head += f" ({r['prefill_workers']}:{r['gpus'] - r['prefill_workers']})"
    parts = [
        head, f"attainment {r.get('slo_attainment', 0):.1%}", f"goodput {r.get('goodput_rps_per_gpu', 0):.3g} req/s/GPU",
        f"TTFT p50 {_s(r.get('ttft_p50_s'))} p99 {_s(r.get('ttft_p99_s'))}",
        f"TPOT p50 {_s(r.get('tpot_p50_s'))} p99 {_s(r.get('tpot_p99_s'))}",
        f"busy {u.get('mean', 0):.2f}", f"flips {r.get('flips', 0)}",
    ]  # fmt: skip
    if "max_rate" in r:
        parts.append(
            f"max rate x{r['max_rate']['rate_scale']:.3g} = {r['max_rate']['offered_rps']:.3g} req/s"
        )
    return ", ".join(parts)


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}ms"
