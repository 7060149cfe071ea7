"""Prometheus HTTP API answers -> the planner's signals, and the queries that ask for them."""

from __future__ import annotations

from typing import Any

import pytest

from tandem.operator.prometheus import (
    PrometheusError,
    build_queries,
    signals_from_answers,
    vector_of,
)


def sample(value: float | str, **labels: str) -> dict[str, Any]:
    return {"metric": labels, "value": [1700000000.0, str(value)]}


def answers(**overrides: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    base: dict[str, list[dict[str, Any]]] = {k: [] for k in build_queries("ns", "p", 60)}
    base.update(
        role=[
            # The PodMonitor sets `role` from the pod label; the series' own is exported_role.
            sample(1, pod="p-prefill-a", role="prefill", exported_role="prefill"),
            sample(1, pod="p-flexible-b", role="decode", exported_role="prefill"),
            sample(1, pod="p-decode-c", role="decode"),  # a scrape config without the relabel
        ],
        busy=[sample(0.5, pod="p-prefill-a"), sample(1.7, pod="p-flexible-b")],
        running=[sample(3, pod="p-decode-c")],
        waiting=[sample(1, pod="p-decode-c")],
        kv_used=[sample(40, pod="p-decode-c")],
        kv_reserved=[sample(10, pod="p-decode-c")],
        kv_total=[sample(100, pod="p-decode-c")],
        draining=[sample(1, pod="p-flexible-b"), sample(0, pod="p-decode-c")],
        ttft_p99=[sample(0.8)],
        tpot_p99=[sample("NaN")],  # histogram_quantile over no requests
        requests=[sample(42)],
        queue=[sample(2)],
        prefill_tps=[sample(1234.5)],
    )
    base.update(overrides)
    return base


def test_workers() -> None:
    got = signals_from_answers(answers(), 60.0, fixed=frozenset({"p-prefill-a", "p-decode-c"}))
    by = {w.name: w for w in got.workers}
    assert {n: w.role for n, w in by.items()} == {
        "p-prefill-a": "prefill", "p-flexible-b": "prefill", "p-decode-c": "decode",
    }  # fmt: skip
    assert by["p-prefill-a"].busy == 0.5 and not by["p-prefill-a"].flexible
    assert by["p-flexible-b"].busy == 1.0  # clamped: a rate over a short window overshoots
    assert by["p-flexible-b"].draining and by["p-flexible-b"].flexible
    c = by["p-decode-c"]
    assert (c.running, c.waiting, c.kv_blocks_used, c.kv_blocks_total) == (3, 1, 40, 100)
    assert c.kv_blocks_reserved == 10 and c.kv_usage == 0.3  # its own streams, as scrape counts
    assert c.busy is None  # no busy series yet: the planner waits instead of guessing


def test_pool_figures() -> None:
    got = signals_from_answers(answers(), 60.0)
    assert (got.ttft_p99_s, got.tpot_p99_s, got.requests, got.queue_depth) == (0.8, None, 42, 2)
    assert (got.prefill_tokens_per_s, got.decode_tokens_per_s) == (1234.5, None)
    assert got.window_s == 60.0 and got.missing == ()


def test_empty_answers_are_no_workers_and_no_figures() -> None:
    got = signals_from_answers({k: [] for k in build_queries("ns", "p", 60)}, 60.0)
    assert got.workers == () and got.ttft_p99_s is None and got.queue_depth is None


def test_queries_select_the_pool_and_use_the_window() -> None:
    q = build_queries("serving", "llama", 90.0)
    assert q["role"] == 'tandem_worker_role{namespace="serving",pool="llama"} == 1'
    assert q["busy"] == (
        'sum by (pod) (rate(tandem_worker_busy_seconds_total{namespace="serving",pool="llama"}[90s]))'
    )
    assert q["ttft_p99"] == (
        "histogram_quantile(0.99, sum by (le) "
        '(rate(tandem_router_ttft_seconds_bucket{namespace="serving",pool="llama"}[90s])))'
    )
    assert 'phase="prefill"' in q["prefill_tps"]


def test_vector_of() -> None:
    ok = {"status": "success", "data": {"resultType": "vector", "result": [sample(1)]}}
    assert vector_of(ok, "q") == [sample(1)]
    with pytest.raises(PrometheusError, match="bad_data: parse error"):
        vector_of({"status": "error", "errorType": "bad_data", "error": "parse error"}, "q")
    with pytest.raises(PrometheusError, match="expected a vector, got matrix"):
        vector_of({"status": "success", "data": {"resultType": "matrix", "result": []}}, "q")
