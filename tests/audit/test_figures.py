"""The audit's figures from one window, with exact expected values."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from tandem.audit.command import AuditConfig, metrics_url
from tandem.audit.figures import attainment, audit
from tandem.audit.report import png, table
from tandem.audit.source import SourceError, snapshots_from_vector
from tandem.planner import Policy, PoolSignals, WorkerSignal
from tandem.planner.scrape import parse

POLICY = Policy(ttft_slo_s=1.0, tpot_slo_s=0.05)


def kv(name: str, role: str, used: int, busy: float = 0.9, running: int = 1) -> WorkerSignal:
    return WorkerSignal(
        name, role, busy=busy, running=running, kv_blocks_used=used, kv_blocks_total=100
    )


def test_a_prompt_heavy_pool_with_idle_decode() -> None:
    # Prefill saturated (busy 1.0 -> pressure 1.25); decode at 20% KV (pressure 0.25).
    signals = PoolSignals(
        (
            WorkerSignal("p0", "prefill", busy=1.0),
            WorkerSignal("p1", "prefill", busy=1.0),
            kv("d0", "decode", 20),
            kv("d1", "decode", 20),
        ),
        30.0,
        requests=5,
    )
    f = audit(POLICY, signals, [])
    p, d = f.roles["prefill"], f.roles["decode"]
    assert (p.workers, p.busy, p.pressure, p.need) == (2, 1.0, 1.25, 2.5)
    assert (d.workers, d.busy, d.pressure, d.need) == (2, 0.9, 0.25, 0.5)
    assert "kv 0.20/0.80" in d.signal
    assert (p.right_size, d.right_size, f.right_size_gpus) == (3, 1, 4)
    assert f.idle_fraction == 0.0  # the 4 GPUs are all needed, just split wrong
    # Best split of the 4 GPUs: 3 prefill + 1 decode carries min(3/2.5, 1/0.5) = 1.2x the
    # load; today's 2+2 carries min(2/2.5, 2/0.5) = 0.8x.
    assert (p.at_same_gpus, d.at_same_gpus) == (3, 1)
    assert f.gain_at_same_gpus == pytest.approx(1.2 / 0.8)
    assert f.imbalance == pytest.approx((1.25 - 0.25) / 1.25)
    text = table(f, ("http://x:1/metrics (connection refused)",))
    assert "best split of the same 4 GPUs: prefill 3, decode 1" in text
    assert "did not answer: http://x:1/metrics" in text


def test_an_oversized_pool_is_mostly_idle() -> None:
    workers = [WorkerSignal(f"p{i}", "prefill", busy=0.2) for i in range(4)]
    workers += [kv(f"d{i}", "decode", 10) for i in range(4)]
    f = audit(POLICY, PoolSignals(tuple(workers), 30.0), [])
    # need: prefill 4 x 0.25 = 1.0, decode 4 x 0.125 = 0.5 -> 1 + 1 worker.
    assert f.right_size_gpus == 2
    assert f.idle_fraction == pytest.approx(0.75)


def routers(ttft: list[float], tpot: list[float]) -> list[tuple[object, object]]:
    r = CollectorRegistry()
    t = Histogram(
        "tandem_router_ttft_seconds", "", ["priority"], buckets=(0.5, 1.0, 2.0), registry=r
    )
    p = Histogram(
        "tandem_router_tpot_seconds", "", ["priority"], buckets=(0.025, 0.05, 0.1), registry=r
    )
    before = parse(generate_latest(r).decode())
    for v in ttft:
        t.labels("x").observe(v)
    for v in tpot:
        p.labels("x").observe(v)
    return [(before, parse(generate_latest(r).decode()))]


def test_attainment_per_slo_and_the_range_for_both() -> None:
    a = attainment(routers([0.2] * 90 + [1.5] * 10, [0.01] * 80 + [0.08] * 20), 1.0, 0.05)  # type: ignore[arg-type]
    assert (a.ttft, a.tpot) == (pytest.approx(0.9), pytest.approx(0.8))
    assert a.both_low == pytest.approx(0.7) and a.both_high == pytest.approx(0.8)


def test_attainment_without_an_slo_is_unknown() -> None:
    a = attainment(routers([0.2], [0.01]), None, 0.05)  # type: ignore[arg-type]
    assert a.ttft is None and a.tpot == pytest.approx(1.0) and a.both_low == a.tpot


def test_prometheus_vector_groups_by_instance_and_drops_target_labels() -> None:
    vector = [
        {"metric": {"__name__": "tandem_worker_role", "role": "decode", "instance": "10.0.0.5:9090", "job": "w"}, "value": [1.0, "1"]},
        {"metric": {"__name__": "tandem_worker_busy_seconds_total", "instance": "10.0.0.5:9090"}, "value": [1.0, "12.5"]},
        {"metric": {"__name__": "tandem_router_queue_depth", "priority": "batch", "instance": "10.0.0.9:8000"}, "value": [1.0, "3"]},
    ]  # fmt: skip
    routers_, workers = snapshots_from_vector(vector)
    assert list(workers) == ["10.0.0.5:9090"] and list(routers_) == ["10.0.0.9:8000"]
    w = workers["10.0.0.5:9090"]
    assert w.value("tandem_worker_role", role="decode") == 1.0
    assert w.value("tandem_worker_busy_seconds_total") == 12.5
    assert routers_["10.0.0.9:8000"].total("tandem_router_queue_depth") == 3.0


def test_prometheus_malformed_sample_is_named() -> None:
    with pytest.raises(SourceError, match="malformed sample"):
        snapshots_from_vector([{"metric": {"__name__": "x"}, "value": "oops"}])


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("127.0.0.1:9000", "http://127.0.0.1:9000/metrics"),
        ("http://h:1", "http://h:1/metrics"),
        ("http://h:1/custom", "http://h:1/custom"),
    ],
)
def test_metrics_url(given: str, url: str) -> None:
    assert metrics_url(given) == url


def test_metrics_url_refuses_other_schemes() -> None:
    with pytest.raises(ValueError, match="only http"):
        metrics_url("ftp://h:1")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "give the pool's --worker"),
        ({"prometheus": "http://p:9090", "workers": ("http://w/metrics",)}, "one or the other"),
        ({"workers": ("http://w/metrics",), "window_s": 0.0}, "--window"),
    ],
)
def test_config_errors_name_the_flag(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AuditConfig(**kwargs)  # type: ignore[arg-type]


def test_png_is_written(tmp_path: object) -> None:
    from pathlib import Path

    f = audit(
        POLICY,
        PoolSignals((WorkerSignal("p0", "prefill", busy=0.5), kv("d0", "decode", 50)), 10.0),
        [],
    )
    out = Path(str(tmp_path)) / "audit.png"
    png(f, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not math.isnan(f.imbalance)
