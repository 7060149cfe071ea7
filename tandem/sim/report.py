"""One run's outcome -> the figures `tandem sim` writes (pure).

SLO attainment counts every arrived request: one rejected, timed out or still
waiting at the end misses its SLO. Goodput is the requests that met both
SLOs per second of the trace's arrival span, per GPU. Busy fractions are
worker-seconds with a step on the device over worker-seconds in the role.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from tandem.sim.config import SimConfig
from tandem.sim.pool import Outcome
from tandem.sim.worker import Job


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of unsorted values; None when empty."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def tpot(job: Job) -> float:
    return (
        (job.finish_s - job.first_token_s) / (job.output_tokens - 1)
        if job.output_tokens > 1
        else 0.0
    )


def summarize(cfg: SimConfig, out: Outcome, span_s: float) -> dict[str, Any]:
    jobs = out.jobs
    ok = [j for j in jobs if j.outcome == "ok"]
    ttft = [j.first_token_s - j.arrival_s for j in ok]
    tp = [tpot(j) for j in ok if j.output_tokens > 1]
    met = sum(
        1
        for j in ok
        if j.first_token_s - j.arrival_s <= cfg.ttft_slo_s and tpot(j) <= cfg.tpot_slo_s
    )
    rejected = Counter(j.outcome for j in jobs if j.outcome != "ok")
    util = utilization(out)
    span = max(span_s, 1e-9)
    return {
        "policy": cfg.policy,
        "gpus": cfg.gpus,
        "prefill_workers": cfg.prefill_workers if cfg.policy != "colocated" else 0,
        "requests": len(jobs),
        "finished": len(ok),
        "rejected": sum(rejected.values()),
        "rejected_by_reason": dict(sorted(rejected.items())),
        "slo": {"ttft_s": cfg.ttft_slo_s, "tpot_s": cfg.tpot_slo_s},
        "slo_attainment": met / len(jobs) if jobs else 0.0,
        "goodput_rps": met / span,
        "goodput_rps_per_gpu": met / span / cfg.gpus,
        "throughput_rps": len(ok) / span,
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p99_s": percentile(ttft, 99),
        "tpot_p50_s": percentile(tp, 50),
        "tpot_p99_s": percentile(tp, 99),
        "utilization": util,
        "prefill_decode_imbalance": imbalance(util),
        "flips": out.flips,
        "drain_s": {
            "count": len(out.drain_s),
            "p50": percentile(out.drain_s, 50),
            "max": max(out.drain_s, default=None),
        },
        "arrival_span_s": span_s,
        "simulated_s": out.end_s,
    }


def utilization(out: Outcome) -> dict[str, float | None]:
    per_role = {
        r: (out.busy_s[r] / out.role_s[r] if out.role_s.get(r) else None)
        for r in ("prefill", "decode", "both")
    }
    total_s = sum(out.role_s.values())
    mean = sum(out.busy_s.values()) / total_s if total_s else 0.0
    return {"mean": min(1.0, mean), **per_role}


def imbalance(util: dict[str, float | None]) -> float | None:
    """Prefill minus decode busy fraction (0 when balanced; None for a colocated pool)."""
    p, d = util.get("prefill"), util.get("decode")
    return None if p is None or d is None else p - d
