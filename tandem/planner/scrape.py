"""Prometheus text from Tandem's own /metrics -> the planner's signals (pure).

A scrape is one `Snapshot` per target; two snapshots of the same target, taken
`window_s` apart, turn counters into rates (busy fraction, tokens/s) and
histograms into percentiles over the window (the difference of the cumulative
buckets), exactly as PromQL's rate() and histogram_quantile() would. The I/O
of fetching the text belongs to the callers (operator, `tandem serve`, audit).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from tandem.planner.signals import PoolSignals, WorkerSignal

Labels = tuple[tuple[str, str], ...]


class MetricsError(ValueError):
    """A /metrics page that is not Prometheus text, or lacks what Tandem exports."""


@dataclass(frozen=True)
class Snapshot:
    """Every sample of one scrape: (sample name, sorted labels) -> value."""

    samples: Mapping[tuple[str, Labels], float]

    def value(self, name: str, **labels: str) -> float | None:
        want = tuple(sorted(labels.items()))
        return self.samples.get((name, want))

    def total(self, name: str, **labels: str) -> float | None:
        """Sum over all series of `name` whose labels include `labels`."""
        found = [
            v
            for (n, ls), v in self.samples.items()
            if n == name and all((k, x) in ls for k, x in labels.items())
        ]
        return sum(found) if found else None

    def buckets(self, name: str) -> dict[float, float]:
        """Cumulative histogram buckets of `name`, summed over its label sets."""
        out: dict[float, float] = {}
        for (n, ls), v in self.samples.items():
            if n == f"{name}_bucket":
                le = dict(ls)["le"]
                bound = math.inf if le in ("+Inf", "inf") else float(le)
                out[bound] = out.get(bound, 0.0) + v
        return out


def parse(text: str) -> Snapshot:
    samples: dict[tuple[str, Labels], float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    except (ValueError, IndexError, KeyError) as exc:
        raise MetricsError(f"not Prometheus text: {exc}") from None
    return Snapshot(samples)


def _delta(before: Snapshot, after: Snapshot, name: str, **labels: str) -> float | None:
    a, b = before.total(name, **labels), after.total(name, **labels)
    if b is None:
        return None
    if a is None:
        return b  # the series was born inside the window (labelled counters start lazily)
    return b - a if b >= a else b  # a counter that went down means the process restarted


def worker_signal(
    name: str, before: Snapshot, after: Snapshot, window_s: float, flexible: bool = True
) -> WorkerSignal:
    role = next(
        (
            r
            for r in ("prefill", "decode", "both")
            if after.value("tandem_worker_role", role=r) == 1
        ),
        None,
    )
    if role is None:
        raise MetricsError(f"{name}: no tandem_worker_role gauge set to 1")
    busy = _delta(before, after, "tandem_worker_busy_seconds_total")
    return WorkerSignal(
        name=name,
        role=role,
        draining=(after.value("tandem_worker_draining") or 0.0) >= 1,
        busy=None if busy is None or window_s <= 0 else min(1.0, max(0.0, busy / window_s)),
        running=int(after.value("tandem_worker_requests_running", role=role) or 0),
        waiting=int(after.value("tandem_worker_requests_waiting", role=role) or 0),
        kv_blocks_used=int(after.value("tandem_worker_kv_blocks_used") or 0),
        kv_blocks_total=int(after.value("tandem_worker_kv_blocks_total") or 0),
        flexible=flexible,
        kv_blocks_reserved=int(after.value("tandem_worker_kv_blocks_reserved") or 0),
    )


def quantile(q: float, before: Mapping[float, float], after: Mapping[float, float]) -> float | None:
    """histogram_quantile over the window: linear inside the bucket, like PromQL."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bucket: its bound is all we know
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = bound, count
    return lower


def fraction_below(
    x: float, before: Mapping[float, float], after: Mapping[float, float]
) -> float | None:
    """Share of the window's observations <= x (linear inside the bucket): the SLO
    attainment of one latency, read from a histogram."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if x <= bound:
            if math.isinf(bound):
                return below / counts[-1]  # past the last finite bucket: a lower bound
            share = (x - lower) / (bound - lower) if bound > lower else 1.0
            return (below + (count - below) * share) / counts[-1]
        lower, below = bound, count
    return 1.0


def window_buckets(
    pairs: Sequence[tuple[Snapshot, Snapshot]], name: str
) -> tuple[dict[float, float], dict[float, float]]:
    """A histogram's cumulative buckets at the window's two ends, summed over targets."""
    before: dict[float, float] = {}
    after: dict[float, float] = {}
    for a, b in pairs:
        for k, v in a.buckets(name).items():
            before[k] = before.get(k, 0.0) + v
        for k, v in b.buckets(name).items():
            after[k] = after.get(k, 0.0) + v
    return before, after


def _window_quantile(
    pairs: Sequence[tuple[Snapshot, Snapshot]], name: str, q: float
) -> tuple[float | None, int]:
    before, after = window_buckets(pairs, name)
    n = int(after.get(math.inf, 0.0) - before.get(math.inf, 0.0))
    return quantile(q, before, after), max(0, n)


def pool_signals(
    workers: Sequence[tuple[str, Snapshot, Snapshot]],
    routers: Sequence[tuple[Snapshot, Snapshot]],
    window_s: float,
    missing: Sequence[str] = (),
    fixed: frozenset[str] = frozenset(),
) -> PoolSignals:
    """One window of a pool: (name, before, after) per worker, (before, after) per router.
    Workers named in `fixed` may not change role."""
    ws = tuple(worker_signal(n, a, b, window_s, n not in fixed) for n, a, b in workers)
    ttft, requests = _window_quantile(routers, "tandem_router_ttft_seconds", 0.99)
    tpot, _ = _window_quantile(routers, "tandem_router_tpot_seconds", 0.99)
    queue = sum(int(b.total("tandem_router_queue_depth") or 0) for _, b in routers)

    def rate(phase: str) -> float | None:
        got = [_delta(a, b, "tandem_worker_tokens_total", phase=phase) for _, a, b in workers]
        known = [g for g in got if g is not None]
        return sum(known) / window_s if known and window_s > 0 else None

    return PoolSignals(
        workers=ws,
        window_s=window_s,
        queue_depth=queue if routers else None,
        ttft_p99_s=ttft,
        tpot_p99_s=tpot,
        requests=requests,
        prefill_tokens_per_s=rate("prefill"),
        decode_tokens_per_s=rate("decode"),
        missing=tuple(missing),
    )
