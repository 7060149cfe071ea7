"""Prometheus text -> planner signals, on exposition text made by prometheus_client itself."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tandem.planner.scrape import (
    MetricsError,
    fraction_below,
    parse,
    pool_signals,
    quantile,
    worker_signal,
)


class FakeWorker:
    """The worker's metric names and labels, in a registry of its own."""

    def __init__(self, role: str) -> None:
        r = self.registry = CollectorRegistry()
        self.role = Gauge("tandem_worker_role", "", ["role"], registry=r)
        self.draining = Gauge("tandem_worker_draining", "", registry=r)
        self.busy = Counter("tandem_worker_busy_seconds", "", registry=r)
        self.tokens = Counter("tandem_worker_tokens", "", ["phase"], registry=r)
        self.running = Gauge("tandem_worker_requests_running", "", ["role"], registry=r)
        self.waiting = Gauge("tandem_worker_requests_waiting", "", ["role"], registry=r)
        self.used = Gauge("tandem_worker_kv_blocks_used", "", registry=r)
        self.total = Gauge("tandem_worker_kv_blocks_total", "", registry=r)
        self.reserved = Gauge("tandem_worker_kv_blocks_reserved", "", registry=r)
        self.set_role(role)

    def set_role(self, role: str) -> None:
        for r in ("prefill", "decode", "both"):
            self.role.labels(r).set(1 if r == role else 0)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


def test_worker_signal_from_two_scrapes() -> None:
    w = FakeWorker("decode")
    w.busy.inc(3.0)
    before = parse(w.text())
    w.busy.inc(7.5)
    w.running.labels("decode").set(5)
    w.waiting.labels("decode").set(2)
    w.running.labels("prefill").set(99)  # a stale series of another role is not read
    w.used.set(42)
    w.total.set(120)
    w.reserved.set(12)  # waiting for a prompt that another worker still prefills
    s = worker_signal("d0", before, parse(w.text()), window_s=10.0)
    assert (s.role, s.busy, s.running, s.waiting) == ("decode", 0.75, 5, 2)
    assert (s.kv_blocks_used, s.kv_blocks_reserved, s.kv_blocks_total) == (42, 12, 120)
    assert s.kv_usage == 0.25  # its own streams' 30 blocks
    assert not s.draining and s.flexible


def test_role_flip_and_draining_are_read_from_the_latest_scrape() -> None:
    w = FakeWorker("prefill")
    before = parse(w.text())
    w.set_role("decode")
    w.draining.set(1)
    s = worker_signal("x", before, parse(w.text()), 5.0, flexible=False)
    assert s.role == "decode" and s.draining and not s.flexible


def test_counter_reset_means_a_restarted_worker() -> None:
    w = FakeWorker("prefill")
    w.busy.inc(100.0)
    before = parse(w.text())
    fresh = FakeWorker("prefill")
    fresh.busy.inc(2.0)
    assert worker_signal("p", before, parse(fresh.text()), 10.0).busy == pytest.approx(0.2)


def test_busy_is_clipped_to_one() -> None:
    w = FakeWorker("prefill")
    before = parse(w.text())
    w.busy.inc(12.0)  # scrape jitter: 12 s of work in a "10 s" window
    assert worker_signal("p", before, parse(w.text()), 10.0).busy == 1.0


def test_a_page_without_tandem_role_is_an_error_naming_the_worker() -> None:
    with pytest.raises(MetricsError, match="p7: no tandem_worker_role"):
        worker_signal("p7", parse(""), parse("up 1\n"), 10.0)


def test_not_prometheus_text() -> None:
    with pytest.raises(MetricsError, match="not Prometheus text"):
        parse("this is { not metrics\n")


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.5, 0.1 + 0.1 * (50 - 40) / 50),  # rank 50 falls in (0.1, 0.2], 10 of its 50 in
        (0.9, 0.2),  # rank 90: exactly the top of (0.1, 0.2]
        (0.99, 0.2 + 0.3 * (99 - 90) / 10),  # rank 99: 9 of the 10 in (0.2, 0.5]
    ],
)
def test_quantile_interpolates_inside_the_bucket(q: float, expected: float) -> None:
    before = {0.1: 10.0, 0.2: 10.0, 0.5: 10.0, math.inf: 10.0}
    # Over the window: 40 in (0, 0.1], 50 in (0.1, 0.2], 10 in (0.2, 0.5].
    after = {0.1: 50.0, 0.2: 100.0, 0.5: 110.0, math.inf: 110.0}
    assert quantile(q, before, after) == pytest.approx(expected)


def test_quantile_of_an_empty_window_is_unknown() -> None:
    same = {0.1: 5.0, math.inf: 5.0}
    assert quantile(0.99, same, same) is None


def test_quantile_beyond_the_last_bucket_is_its_bound() -> None:
    assert quantile(0.99, {}, {1.0: 1.0, math.inf: 100.0}) == 1.0


def router_text(ttft: list[float], tpot: list[float], queue: int) -> str:
    r = CollectorRegistry()
    t = Histogram(
        "tandem_router_ttft_seconds", "", ["priority"], buckets=(0.1, 0.5, 1.0, 2.0), registry=r
    )
    p = Histogram(
        "tandem_router_tpot_seconds", "", ["priority"], buckets=(0.01, 0.05, 0.1), registry=r
    )
    q = Gauge("tandem_router_queue_depth", "", ["priority"], registry=r)
    for v in ttft:
        t.labels("interactive" if v < 1 else "batch").observe(v)
    for v in tpot:
        p.labels("interactive").observe(v)
    q.labels("interactive").set(queue)
    q.labels("batch").set(1)
    return generate_latest(r).decode()


def test_pool_signals_merge_routers_and_workers() -> None:
    p, d = FakeWorker("prefill"), FakeWorker("decode")
    p.tokens.labels("prefill").inc(1000)
    before = {"p": parse(p.text()), "d": parse(d.text())}
    r_before = parse(router_text([0.05] * 10, [0.02] * 10, 0))
    p.busy.inc(8.0)
    d.busy.inc(2.0)
    p.tokens.labels("prefill").inc(5000)
    d.tokens.labels("decode").inc(300)
    # 10 old + 100 new TTFTs across two priority classes: 98 fast, 2 at 1.5 s.
    r_after = parse(router_text([0.05] * 10 + [0.3] * 98 + [1.5] * 2, [0.02] * 10 + [0.08] * 50, 3))
    s = pool_signals(
        [("p", before["p"], parse(p.text())), ("d", before["d"], parse(d.text()))],
        [(r_before, r_after)],
        window_s=10.0,
        missing=("router-1",),
        fixed=frozenset({"d"}),
    )
    assert [w.busy for w in s.workers] == [0.8, 0.2]
    assert [w.flexible for w in s.workers] == [True, False]
    assert s.requests == 100
    assert s.ttft_p99_s is not None and 1.0 < s.ttft_p99_s <= 2.0  # the slow 2% set the p99
    assert s.tpot_p99_s is not None and 0.05 < s.tpot_p99_s <= 0.1
    assert s.queue_depth == 4  # both priority classes
    assert s.prefill_tokens_per_s == 500.0 and s.decode_tokens_per_s == 30.0
    assert s.missing == ("router-1",)


def test_pool_without_routers_has_no_latency_or_queue() -> None:
    w = FakeWorker("decode")
    snap = parse(w.text())
    s = pool_signals([("d", snap, snap)], [], 10.0)
    assert s.queue_depth is None and s.ttft_p99_s is None and s.requests == 0


@pytest.mark.parametrize(
    ("x", "expected"),
    [
        (0.05, 20 / 100),  # half of the (0, 0.1] bucket's 40
        (0.1, 40 / 100),
        (0.15, (40 + 25) / 100),
        (0.5, 1.0),
        (9.0, 1.0),
    ],
)
def test_fraction_below_is_the_window_cdf(x: float, expected: float) -> None:
    before = {0.1: 10.0, 0.2: 10.0, 0.5: 10.0, math.inf: 10.0}
    after = {0.1: 50.0, 0.2: 100.0, 0.5: 110.0, math.inf: 110.0}
    assert fraction_below(x, before, after) == pytest.approx(expected)


def test_fraction_below_past_the_last_bucket_is_a_lower_bound() -> None:
    # 10 of 100 observations beyond the last finite bound (1.0): 2.0 may or may not cover them.
    assert fraction_below(2.0, {}, {1.0: 90.0, math.inf: 100.0}) == pytest.approx(0.9)
    assert fraction_below(1.0, {}, {}) is None
