"""Traffic control in the router: two priority gates, shedding of the least
urgent with 429 + Retry-After, measured per-worker rates, per-class metrics."""

from __future__ import annotations

import asyncio
import time

import pytest

from tandem.router.admission import (
    PrefillRate,
    decide_measured,
    drain_seconds,
    estimate_ttft_measured,
    pooled_seconds_per_token,
)
from tandem.router.errors import BadRequest, DeadlineRejected, Overloaded, http_error
from tandem.router.metrics import RouterMetrics
from tandem.router.priority import PRIORITY_HEADER, PriorityClass, parse_classes, resolve
from tandem.router.traffic import TrafficController, TrafficSettings

HIGH, MID, LOW = PriorityClass("high", 100, 1.0), PriorityClass("mid", 50), PriorityClass("low", 1)


def controller(
    capacity: int = 0,
    max_queue: int = 2,
    policy: str = "priority",
    metrics: RouterMetrics | None = None,
) -> TrafficController:
    return TrafficController(
        lambda: capacity,
        lambda: 1,
        metrics or RouterMetrics(),
        settings=TrafficSettings(5.0, max_queue, policy),
    )


def sample(metrics: RouterMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_full_queue_sheds_the_least_urgent_waiter_for_an_urgent_arrival() -> None:
    metrics = RouterMetrics()
    t = controller(metrics=metrics)
    low = asyncio.create_task(t.admit(LOW, 10, None))
    mid = asyncio.create_task(t.admit(MID, 10, None))
    await asyncio.sleep(0.01)
    high = asyncio.create_task(t.admit(HIGH, 10, None))
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded, match="overloaded") as info:
        await low
    err = http_error(info.value)
    assert err.status == 429 and int(err.headers["Retry-After"]) >= 1
    assert not mid.done() and not high.done()
    assert sample(metrics, "tandem_router_shed_total", priority="low", reason="displaced") == 1
    assert sample(metrics, "tandem_router_queue_depth", priority="low") == 0
    assert sample(metrics, "tandem_router_queue_depth", priority="high") == 1
    mid.cancel()
    high.cancel()


async def test_full_queue_refuses_an_arrival_no_more_urgent_than_any_waiter() -> None:
    metrics = RouterMetrics()
    t = controller(metrics=metrics)
    waiting = [asyncio.create_task(t.admit(MID, 10, None)) for _ in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded):
        await t.admit(LOW, 10, None)
    with pytest.raises(Overloaded):
        await t.admit(MID, 10, None)  # equal priority: the later arrival is the one shed
    assert sample(metrics, "tandem_router_shed_total", priority="mid", reason="queue_full") == 1
    assert sample(metrics, "tandem_router_shed_total", priority="low", reason="queue_full") == 1
    for w in waiting:
        w.cancel()


async def test_fcfs_policy_serves_in_arrival_order_and_sheds_the_latest() -> None:
    t = controller(capacity=1, max_queue=2, policy="fcfs")
    first = await t.admit(LOW, 1, None)
    order: list[str] = []

    async def wait(cls: PriorityClass, name: str) -> None:
        ticket = await t.admit(cls, 1, None)
        order.append(name)
        t.release(ticket)

    tasks = [asyncio.create_task(wait(LOW, "low")), asyncio.create_task(wait(HIGH, "high"))]
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded):
        await t.admit(HIGH, 1, None)
    t.release(first)
    await asyncio.gather(*tasks)
    assert order == ["low", "high"]


async def test_prompt_gate_orders_prefills_by_priority() -> None:
    t = TrafficController(lambda: 10, lambda: 1, RouterMetrics(), prompt_capacity=lambda: 1)
    tickets = {c.name: await t.admit(c, 5, None) for c in (LOW, MID, HIGH)}
    order: list[str] = []
    hold = t.prompt_slot(tickets["low"])
    await hold.__aenter__()

    async def prefill(name: str) -> None:
        async with t.prompt_slot(tickets[name]):
            order.append(name)

    tasks = [asyncio.create_task(prefill("mid")), asyncio.create_task(prefill("high"))]
    await asyncio.sleep(0.01)
    assert order == []
    await hold.__aexit__(None, None, None)
    await asyncio.gather(*tasks)
    assert order == ["high", "mid"]


async def test_queue_wait_is_observed_per_class_and_phase() -> None:
    metrics = RouterMetrics()
    t = controller(capacity=1, metrics=metrics)
    first = await t.admit(LOW, 1, None)
    task = asyncio.create_task(t.admit(HIGH, 1, None))
    await asyncio.sleep(0.05)
    t.release(first)
    await task
    count = sample(
        metrics, "tandem_router_queue_wait_seconds_count", priority="high", phase="decode"
    )
    total = sample(metrics, "tandem_router_queue_wait_seconds_sum", priority="high", phase="decode")
    assert count == 1 and total >= 0.04


async def test_deadline_shed_carries_retry_after_and_counts() -> None:
    metrics = RouterMetrics()
    t = controller(metrics=metrics, max_queue=8)
    waiting = asyncio.create_task(t.admit(HIGH, 100_000, None))
    await asyncio.sleep(0.01)
    with pytest.raises(DeadlineRejected) as info:
        await t.admit(HIGH, 10, time.monotonic() + 1.0)
    assert http_error(info.value).headers["Retry-After"] == "25"  # 100k tokens at the 4000/s prior
    assert sample(metrics, "tandem_router_shed_total", priority="high", reason="deadline") == 1
    waiting.cancel()


async def test_lower_priority_backlog_does_not_count_against_an_urgent_deadline() -> None:
    t = controller(max_queue=8)
    batch = asyncio.create_task(t.admit(LOW, 100_000, None))
    await asyncio.sleep(0.01)
    # 100k low-priority tokens are queued, but workers serve by priority too.
    assert t.backlog(HIGH.priority).tokens_ahead == 0
    assert controller(policy="fcfs").backlog(HIGH.priority).tokens_ahead == 0
    batch.cancel()


async def test_rates_are_learned_per_worker() -> None:
    t = controller(capacity=4)
    for _ in range(20):
        a = await t.admit(LOW, 1000, None)
        a.granted_at -= 1.0  # 2000 tokens (1000 ahead of it, then its own) in about a second
        t.first_token(a, 1000, "slow", tokens_before=1000)
        t.release(a)
        b = await t.admit(LOW, 1000, None)
        b.granted_at -= 0.1  # 1000 tokens in a tenth of that
        t.first_token(b, 1000, "fast")
        t.release(b)
    slow, fast = t.rates["slow"].seconds_per_token, t.rates["fast"].seconds_per_token
    assert slow == pytest.approx(0.98 / 2000, rel=0.05)
    assert fast == pytest.approx(0.08 / 1000, rel=0.1)


# ----- pure admission with measured per-worker rates ------------------------------


@pytest.mark.parametrize(
    ("rates", "workers", "expected"),
    [
        ([PrefillRate(0.001), PrefillRate(0.001)], 2, 0.0005),  # two equal workers: twice the rate
        ([PrefillRate(0.001), PrefillRate(0.003)], 2, 1 / (1000 + 1000 / 3)),
        ([PrefillRate(0.002)], 2, 0.001),  # the unmeasured worker counts as the measured one
        ([], 4, 0.001 / 4),  # nothing measured: the prior
    ],
)
def test_pooled_rate(rates: list[PrefillRate], workers: int, expected: float) -> None:
    assert pooled_seconds_per_token(rates, workers, PrefillRate(0.001)) == pytest.approx(expected)


def test_measured_estimate_and_decision() -> None:
    rates = [PrefillRate(0.001, 0.01), PrefillRate(0.001, 0.03)]
    # 0.02 overhead + 2000 ahead at 0.0005 + 100 at 0.001 = 1.12 s
    assert estimate_ttft_measured(rates, 2, PrefillRate(), 2000, 100) == pytest.approx(1.12)
    assert decide_measured(rates, 2, PrefillRate(), 2000, 100, 1.2).admit
    no = decide_measured(rates, 2, PrefillRate(), 2000, 100, 1.0)
    assert not no.admit and "measured rates" in no.reason
    assert drain_seconds(rates, 2, PrefillRate(), 2000) == pytest.approx(1.0)


# ----- classes and validation -------------------------------------------------------


def test_classes_take_an_optional_tpot_slo() -> None:
    assert parse_classes("interactive:100:1s:50ms,batch:10::2s") == (
        PriorityClass("interactive", 100, 1.0, 0.05),
        PriorityClass("batch", 10, None, 2.0),
    )
    with pytest.raises(ValueError, match="TPOT SLO"):
        parse_classes("x:1:1s:0")


def test_unknown_class_names_the_field_it_came_from() -> None:
    classes = (HIGH, LOW)
    with pytest.raises(BadRequest) as body:
        resolve(classes, LOW, {}, "urgent")
    assert body.value.param == "priority" and http_error(body.value).status == 400
    with pytest.raises(BadRequest) as header:
        resolve(classes, LOW, {PRIORITY_HEADER: ""}, "high")
    assert header.value.param == PRIORITY_HEADER


def test_urgency_travels_as_seconds_left() -> None:
    from tandem.router.worker_client import NO_URGENCY, Urgency, urgency_message

    msg = urgency_message(Urgency(100, deadline=10.5), now=10.0)
    assert (msg.priority, msg.ttft_seconds_left) == (100, 0.5)
    # Already late: the smallest positive figure (due now), never 0 (which means "no deadline").
    assert urgency_message(Urgency(5, deadline=9.0), now=10.0).ttft_seconds_left == 1e-6
    none = urgency_message(NO_URGENCY, now=10.0)
    assert (none.priority, none.ttft_seconds_left) == (0, 0.0)
