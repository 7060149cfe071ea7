"""One window of a live pool -> the audit's figures (pure)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tandem.planner import Policy, PoolSignals, demand
from tandem.planner.demand import live_workers
from tandem.planner.plan import best_split
from tandem.planner.scrape import Snapshot, fraction_below, window_buckets
from tandem.planner.signals import ROLES


@dataclass(frozen=True)
class RoleFigures:
    workers: int
    busy: float | None  # mean busy fraction (time with model work on the device)
    pressure: float  # the planner's: 1.0 = at its target
    signal: str  # which signal set the pressure
    need: float  # workers to run this role at target
    right_size: int  # workers to run it at target, within its min/max
    at_same_gpus: int  # workers of this role in the best split of the current GPUs


@dataclass(frozen=True)
class Attainment:
    ttft: float | None  # share of the window's requests within the TTFT SLO
    tpot: float | None
    both_low: float | None  # both SLOs: the histograms hold marginals only, so a range
    both_high: float | None


@dataclass(frozen=True)
class AuditFigures:
    window_s: float
    requests: int
    gpus: int
    roles: dict[str, RoleFigures]
    imbalance: float  # |p_prefill - p_decode| / max: 0 balanced, 1 one role idle
    attainment: Attainment
    right_size_gpus: int
    idle_fraction: float  # share of the pool's GPUs the load does not need at target
    gain_at_same_gpus: float  # load the best split carries at target / the current split's

    def as_json(self) -> dict[str, object]:
        return {
            "window_s": self.window_s,
            "requests": self.requests,
            "gpus": self.gpus,
            "roles": {r: vars(f) for r, f in self.roles.items()},
            "prefill_decode_imbalance": self.imbalance,
            "slo_attainment": vars(self.attainment),
            "right_size_gpus": self.right_size_gpus,
            "idle_fraction": self.idle_fraction,
            "gain_at_same_gpus": self.gain_at_same_gpus,
        }


def attainment(
    routers: Sequence[tuple[Snapshot, Snapshot]], ttft_slo: float | None, tpot_slo: float | None
) -> Attainment:
    def share(name: str, slo: float | None) -> float | None:
        if slo is None:
            return None
        return fraction_below(slo, *window_buckets(routers, name))

    t, p = (
        share("tandem_router_ttft_seconds", ttft_slo),
        share("tandem_router_tpot_seconds", tpot_slo),
    )
    if t is None or p is None:
        one = t if p is None else p
        return Attainment(t, p, one, one)
    return Attainment(t, p, max(0.0, t + p - 1.0), min(t, p))  # Frechet bounds


def audit(
    policy: Policy, signals: PoolSignals, routers: Sequence[tuple[Snapshot, Snapshot]]
) -> AuditFigures:
    roles = demand(policy, signals)
    gpus = sum(policy.bounds(r).gpus_per_replica * roles[r].workers for r in ROLES)
    need = {r: roles[r].need for r in ROLES}
    right = {r: policy.bounds(r).clamp(max(1, math.ceil(need[r] - 1e-9))) for r in ROLES}
    same = best_split(policy, gpus, need) if gpus else {r: 0 for r in ROLES}
    figures = {
        r: RoleFigures(
            workers=roles[r].workers,
            busy=_busy(signals, r),
            pressure=roles[r].value,
            signal=roles[r].why,
            need=need[r],
            right_size=right[r],
            at_same_gpus=same[r],
        )
        for r in ROLES
    }
    p, d = roles["prefill"].value, roles["decode"].value
    right_gpus = policy.gpus(right["prefill"], right["decode"])
    return AuditFigures(
        window_s=signals.window_s,
        requests=signals.requests,
        gpus=gpus,
        roles=figures,
        imbalance=abs(p - d) / max(p, d) if max(p, d) > 0 else 0.0,
        attainment=attainment(routers, policy.ttft_slo_s, policy.tpot_slo_s),
        right_size_gpus=right_gpus,
        idle_fraction=max(0.0, 1.0 - right_gpus / gpus) if gpus else 0.0,
        gain_at_same_gpus=_capacity(same, need)
        / _capacity({r: roles[r].workers for r in ROLES}, need),
    )


def _capacity(split: dict[str, int], need: dict[str, float]) -> float:
    """Load (in multiples of today's) a split carries with every role at target."""
    ratios = [split[r] / need[r] for r in ROLES if need[r] > 0]
    return min(ratios) if ratios else 1.0


def _busy(signals: PoolSignals, role: str) -> float | None:
    known = [w.busy for w in live_workers(signals.workers, role) if w.busy is not None]
    return sum(known) / len(known) if known else None
