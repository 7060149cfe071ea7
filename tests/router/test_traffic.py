from __future__ import annotations

import asyncio
import time

import pytest

from tandem.router.errors import DeadlineRejected, Unavailable
from tandem.router.metrics import RouterMetrics
from tandem.router.priority import PriorityClass
from tandem.router.traffic import TrafficController

HIGH, LOW = PriorityClass("high", 100), PriorityClass("low", 1)


async def test_priority_order_and_bounded_concurrency() -> None:
    capacity = [1]
    t = TrafficController(lambda: capacity[0], lambda: 1, RouterMetrics())
    first = await t.admit(LOW, 10, None)
    order: list[str] = []

    async def wait(cls: PriorityClass, name: str) -> None:
        ticket = await t.admit(cls, 10, None)
        order.append(name)
        t.release(ticket)

    tasks = [asyncio.create_task(wait(LOW, "low1")), asyncio.create_task(wait(HIGH, "high")),
             asyncio.create_task(wait(LOW, "low2"))]
    await asyncio.sleep(0.01)
    assert order == [] and t.inflight == 1
    t.release(first)
    await asyncio.gather(*tasks)
    assert order == ["high", "low1", "low2"]
    assert t.inflight == 0


async def test_deadline_rejection_counts_backlog() -> None:
    t = TrafficController(lambda: 0, lambda: 1, RouterMetrics())
    waiting = asyncio.create_task(t.admit(HIGH, 100_000, None))
    await asyncio.sleep(0.01)
    with pytest.raises(DeadlineRejected, match="100000 prompt tokens ahead"):
        await t.admit(HIGH, 10, time.monotonic() + 1.0)
    waiting.cancel()


async def test_queue_timeout_is_503() -> None:
    t = TrafficController(lambda: 0, lambda: 1, RouterMetrics(), queue_timeout_s=0.05)
    with pytest.raises(Unavailable, match="waited"):
        await t.admit(LOW, 1, None)
    assert t.backlog(0).tokens_ahead == 0


async def test_cancelled_waiter_leaves_the_queue() -> None:
    metrics = RouterMetrics()
    t = TrafficController(lambda: 0, lambda: 1, metrics)
    task = asyncio.create_task(t.admit(LOW, 5, None))
    await asyncio.sleep(0.01)
    assert metrics.queue_depth.labels(priority="low")._value.get() == 1
    task.cancel()
    await asyncio.sleep(0.01)
    assert t.backlog(0).tokens_ahead == 0
    assert metrics.queue_depth.labels(priority="low")._value.get() == 0


async def test_slot_granted_as_the_queue_timeout_fires_is_not_leaked() -> None:
    # The queue timeout and a release that grants this waiter its slot fall due in
    # the same event-loop turn: the waiter raises 503, so the slot must go back.
    t = TrafficController(lambda: 1, lambda: 1, RouterMetrics(), queue_timeout_s=0.05)
    first = await t.admit(LOW, 1, None)
    waiting = asyncio.create_task(t.admit(LOW, 7, None))
    await asyncio.sleep(0)
    asyncio.get_running_loop().call_later(0.06, t.release, first)
    time.sleep(0.2)  # block the loop so both timers are due in one turn
    with pytest.raises(Unavailable, match="waited"):
        await waiting
    assert t.inflight == 0
    assert t.backlog(0).tokens_ahead == 0
