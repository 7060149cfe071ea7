"""Searches over simulations: the best static split, the largest sustained rate,
and the fluid bound that says how much redistribution could gain at most.

The headline figure (../design: REDISTRIBUTION.md) is the largest request
rate a pool sustains with >= 90% of requests meeting both SLOs, found by
scaling the trace's arrival times and bisecting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tandem.sim.config import SimConfig
from tandem.sim.cost import CostModel
from tandem.sim.pool import Simulation
from tandem.sim.report import summarize
from tandem.sim.trace import SimRequest, scale_rate

TARGET_ATTAINMENT = 0.9


def simulate(cfg: SimConfig, cost: CostModel, requests: Sequence[SimRequest], rate_scale: float = 1.0,
             progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:  # fmt: skip
    reqs = scale_rate(requests, rate_scale) if rate_scale != 1.0 else list(requests)
    sim = Simulation(cfg, cost, reqs)
    out = sim.run(progress)
    span = reqs[-1].arrival_s - reqs[0].arrival_s if reqs else 0.0
    result = summarize(cfg, out, span)
    result["rate_scale"] = rate_scale
    result["offered_rps"] = len(reqs) / span if span > 0 else None
    result["decisions"] = out.decisions[:200]
    result["over_time"] = [dataclasses.asdict(s) for s in out.samples]
    return result


def candidate_splits(
    gpus: int,
    cost: CostModel,
    requests: Sequence[SimRequest],
    width: int = 2,
    exhaustive_below: int = 10,
) -> list[int]:
    """Prefill worker counts to try: all for small pools, else around the fluid optimum."""
    if gpus <= exhaustive_below:
        return list(range(1, gpus))
    p, d = gpu_seconds(cost, requests)
    best = round(gpus * p / (p + d)) if p + d > 0 else gpus // 2
    step = max(1, gpus // 32)
    return sorted({min(gpus - 1, max(1, best + k * step)) for k in range(-width, width + 1)})


def best_static(cfg: SimConfig, cost: CostModel, requests: Sequence[SimRequest], rate_scale: float = 1.0,
                on_try: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """The static split with the highest goodput at this rate (ties: higher attainment)."""
    best: dict[str, Any] | None = None
    for p in candidate_splits(cfg.gpus, cost, requests):
        r = simulate(
            dataclasses.replace(cfg, policy="static", prefill_workers=p), cost, requests, rate_scale
        )
        if on_try is not None:
            on_try(p, r)
        if best is None or (r["goodput_rps"], r["slo_attainment"]) > (
            best["goodput_rps"],
            best["slo_attainment"],
        ):
            best = r
    assert best is not None
    return best


@dataclass(frozen=True)
class MaxRate:
    rate_scale: float  # the largest scale found that sustains the target
    offered_rps: float
    result: dict[str, Any] | None  # the run at that scale (None: not even the lowest scale held)
    tries: tuple[tuple[float, float], ...]  # (scale, attainment) in the order tried


def find_max_rate(run: Callable[[float], dict[str, Any]], lo: float = 0.25, hi: float = 4.0,
                  rel_tol: float = 0.05, max_runs: int = 14) -> MaxRate:  # fmt: skip
    """Bisect the rate scale for the largest one with attainment >= 90%.

    Grows `hi` (doubling) while it still holds and shrinks `lo` (halving) while
    it fails, then bisects until hi/lo - 1 < rel_tol."""
    tries: list[tuple[float, float]] = []
    results: dict[float, dict[str, Any]] = {}

    def ok(scale: float) -> bool:
        r = run(scale)
        results[scale] = r
        tries.append((scale, r["slo_attainment"]))
        return bool(r["slo_attainment"] >= TARGET_ATTAINMENT)

    if ok(lo):
        good = lo
        while len(tries) < max_runs and ok(hi):
            good, lo, hi = hi, hi, hi * 2
    else:
        while True:
            if len(tries) >= max_runs or lo < 1e-3:
                return MaxRate(0.0, 0.0, None, tuple(tries))
            hi, lo = lo, lo / 2
            if ok(lo):
                good = lo
                break
    while len(tries) < max_runs and hi / lo - 1 > rel_tol:
        mid = (lo * hi) ** 0.5
        if ok(mid):
            good, lo = mid, mid
        else:
            hi = mid
    best = results[good]
    return MaxRate(good, best.get("offered_rps") or 0.0, best, tuple(tries))


def gpu_seconds(cost: CostModel, requests: Sequence[SimRequest]) -> tuple[float, float]:
    """GPU-seconds of prefill and decode the requests need, at full steps (the fluid model).

    Prefill: per-token and attention terms, the step's fixed cost shared by a full
    token budget. Decode: per token, at the largest batch the KV cache holds for
    the mean context (capped by the engine's max batch)."""
    if not requests:
        return 0.0, 0.0
    pre = dec = 0.0
    budget = cost.max_num_batched_tokens
    ctx_mean = sum(r.input_tokens + r.output_tokens / 2 for r in requests) / len(requests)
    batch = max(1, min(cost.max_num_seqs, int(cost.kv_capacity_tokens / max(ctx_mean, 1.0))))
    per_step = cost.decode_s(batch, batch * ctx_mean)
    for r in requests:
        n = r.input_tokens
        pre += (
            cost.prefill_per_token_s * n
            + cost.prefill_per_attn_s * n * n / 2
            + cost.prefill_base_s * n / budget
        )
        dec += per_step / batch * max(0, r.output_tokens - 1)
    return pre, dec


def fluid_bound(
    cost: CostModel, requests: Sequence[SimRequest], window_s: float = 300.0
) -> dict[str, float]:
    """Largest gain of an ideal adaptive pool over the best static split: per window w of
    the trace, prefill and decode GPU-seconds per second (a_p(w), a_d(w)); adaptive
    sustains N / max_w(a_p + a_d), static N / (max_w a_p + max_w a_d)."""
    if not requests:
        return {"adaptive_over_static": 1.0, "window_s": window_s, "windows": 0}
    t0 = requests[0].arrival_s
    buckets: dict[int, list[SimRequest]] = {}
    for r in requests:
        buckets.setdefault(int((r.arrival_s - t0) // window_s), []).append(r)
    loads = [gpu_seconds(cost, rs) for rs in buckets.values()]
    ap = max(p for p, _ in loads) / window_s
    ad = max(d for _, d in loads) / window_s
    both = max(p + d for p, d in loads) / window_s
    total_p = sum(p for p, _ in loads)
    total_d = sum(d for _, d in loads)
    return {
        "adaptive_over_static": (ap + ad) / both if both else 1.0,
        "prefill_share": total_p / (total_p + total_d) if total_p + total_d else 0.0,
        "window_s": window_s,
        "windows": len(loads),
    }
