"""Signals from a Prometheus HTTP API (when the pool's spec names one).

The queries compute what `tandem.planner.scrape.pool_signals` computes from two
scrapes, over the spec's `window` instead of the loop's interval: rate() of
the busy-seconds and token counters, histogram_quantile() of the routers'
histograms summed over routers, increase() of their request count, and the
gauges as they stand. Series are selected by the `namespace` and `pool` labels
(the chart's PodMonitor sets `pool` from the pod label `tandem.dev/pool`) and
told apart by `pod`. `build_queries` and `signals_from_answers` are pure; only
`query_all` does I/O. A Prometheus that does not answer is a source down: the
planner then decides nothing.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from tandem.planner import PoolSignals, WorkerSignal

TIMEOUT_S = 5.0
Vector = Sequence[Mapping[str, Any]]  # Prometheus' "vector" result: [{metric, value}]


class PrometheusError(Exception):
    """Prometheus did not answer a query, or answered something else than a vector."""


def build_queries(namespace: str, pool: str, window_s: float) -> dict[str, str]:
    sel = f'namespace="{namespace}",pool="{pool}"'
    w = f"{max(1, round(window_s))}s"

    def by_pod(metric: str, how: str = "sum") -> str:
        return f"{how} by (pod) ({metric}{{{sel}}})"

    def p99(metric: str) -> str:
        return f"histogram_quantile(0.99, sum by (le) (rate({metric}_bucket{{{sel}}}[{w}])))"

    return {
        "role": f"tandem_worker_role{{{sel}}} == 1",
        "draining": by_pod("tandem_worker_draining", "max"),
        "busy": f"sum by (pod) (rate(tandem_worker_busy_seconds_total{{{sel}}}[{w}]))",
        "running": by_pod("tandem_worker_requests_running"),
        "waiting": by_pod("tandem_worker_requests_waiting"),
        "kv_used": by_pod("tandem_worker_kv_blocks_used"),
        "kv_reserved": by_pod("tandem_worker_kv_blocks_reserved"),
        "kv_total": by_pod("tandem_worker_kv_blocks_total"),
        "ttft_p99": p99("tandem_router_ttft_seconds"),
        "tpot_p99": p99("tandem_router_tpot_seconds"),
        "requests": f"sum(increase(tandem_router_ttft_seconds_count{{{sel}}}[{w}]))",
        "queue": f"sum(tandem_router_queue_depth{{{sel}}})",
        "prefill_tps": f'sum(rate(tandem_worker_tokens_total{{{sel},phase="prefill"}}[{w}]))',
        "decode_tps": f'sum(rate(tandem_worker_tokens_total{{{sel},phase="decode"}}[{w}]))',
    }


def _value(sample: Mapping[str, Any]) -> float | None:
    try:
        v = float(sample["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return None if math.isnan(v) or math.isinf(v) else v


def _per_pod(vector: Vector) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in vector:
        pod, v = (s.get("metric") or {}).get("pod"), _value(s)
        if pod is not None and v is not None:
            out[str(pod)] = v
    return out


def _scalar(vector: Vector) -> float | None:
    return _value(vector[0]) if vector else None


def _roles(vector: Vector) -> dict[str, str]:
    """The worker's own `role` label: a scrape config that also sets `role` from the pod
    label (the chart's PodMonitor does) keeps the series' one as `exported_role`."""
    out: dict[str, str] = {}
    for s in vector:
        labels = s.get("metric") or {}
        role = labels.get("exported_role") or labels.get("role")
        if labels.get("pod") and role:
            out[str(labels["pod"])] = str(role)
    return out


def signals_from_answers(
    answers: Mapping[str, Vector], window_s: float, fixed: frozenset[str] = frozenset()
) -> PoolSignals:
    """The planner's signals from the answers to `build_queries` (one vector each)."""
    roles = _roles(answers["role"])
    per = {k: _per_pod(answers.get(k, ())) for k in ("draining", "busy", "running", "waiting",
                                                     "kv_used", "kv_reserved", "kv_total")}  # fmt: skip
    workers = tuple(
        WorkerSignal(
            name=pod,
            role=role,
            draining=per["draining"].get(pod, 0.0) >= 1,
            busy=None if pod not in per["busy"] else min(1.0, max(0.0, per["busy"][pod])),
            running=int(per["running"].get(pod, 0)),
            waiting=int(per["waiting"].get(pod, 0)),
            kv_blocks_used=int(per["kv_used"].get(pod, 0)),
            kv_blocks_reserved=int(per["kv_reserved"].get(pod, 0)),
            kv_blocks_total=int(per["kv_total"].get(pod, 0)),
            flexible=pod not in fixed,
        )
        for pod, role in sorted(roles.items())
    )
    queue = _scalar(answers["queue"])
    return PoolSignals(
        workers=workers,
        window_s=window_s,
        queue_depth=None if queue is None else int(queue),
        ttft_p99_s=_scalar(answers["ttft_p99"]),
        tpot_p99_s=_scalar(answers["tpot_p99"]),
        requests=int(_scalar(answers["requests"]) or 0),
        prefill_tokens_per_s=_scalar(answers["prefill_tps"]),
        decode_tokens_per_s=_scalar(answers["decode_tps"]),
    )


def vector_of(answer: Mapping[str, Any], query: str) -> Vector:
    """The result of one /api/v1/query answer, or PrometheusError saying what came back."""
    if answer.get("status") != "success":
        raise PrometheusError(f"{query}: {answer.get('errorType')}: {answer.get('error')}")
    data = answer.get("data") or {}
    if data.get("resultType") != "vector":
        raise PrometheusError(f"{query}: expected a vector, got {data.get('resultType')}")
    return list(data.get("result") or ())


async def query_all(
    session: aiohttp.ClientSession, url: str, queries: Mapping[str, str]
) -> dict[str, Vector]:
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)

    async def one(query: str) -> Vector:
        try:
            async with session.get(f"{url}/api/v1/query", params={"query": query},
                                   timeout=timeout) as answer:  # fmt: skip
                body = await answer.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise PrometheusError(f"{url}: {type(exc).__name__} {exc}".strip()) from None
        return vector_of(body, query)

    got = await asyncio.gather(*(one(q) for q in queries.values()))
    return dict(zip(queries, got, strict=True))


async def collect(
    session: aiohttp.ClientSession,
    url: str,
    namespace: str,
    pool: str,
    window_s: float,
    fixed: frozenset[str],
) -> PoolSignals:
    try:
        answers = await query_all(session, url, build_queries(namespace, pool, window_s))
    except PrometheusError as exc:
        return PoolSignals(workers=(), window_s=window_s, missing=(f"prometheus {exc}",))
    return signals_from_answers(answers, window_s, fixed)
