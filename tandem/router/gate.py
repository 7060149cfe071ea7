"""A priority gate: at most `capacity()` holders at a time, waiters served
most urgent first, and a bounded queue that sheds its least urgent waiter.

The router keeps two: decode slots (requests in flight on decode workers) and
prompts (prefills in flight on prefill workers), each ordered by priority, so a
burst of long batch prompts queues for the prefill workers without holding back
an interactive request's decode slot, and the other way round.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class Shed(Exception):
    """The waiter was dropped from a full queue for a more urgent one."""


@dataclass(order=True)
class _Waiter(Generic[T]):
    key: tuple[int, int]
    item: T = field(compare=False)
    future: asyncio.Future[None] = field(compare=False)


def waiter_key(priority: int, seq: int, policy: str) -> tuple[int, int]:
    """Heap key, smallest first: priority high first then arrival; fcfs: arrival."""
    return (0, seq) if policy == "fcfs" else (-priority, seq)


class PriorityGate(Generic[T]):
    def __init__(
        self, capacity: Callable[[], int], max_queue: int, policy: str = "priority"
    ) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self._capacity = capacity
        self._max_queue = max_queue
        self._policy = policy
        self._heap: list[_Waiter[T]] = []
        self._seq = itertools.count()
        self.holders = 0

    def queued(self) -> list[T]:
        return [w.item for w in self._heap]

    def enqueue(self, item: T, priority: int) -> tuple[asyncio.Future[None], T | None]:
        """Queue `item`; returns its future and the item shed to make room (or
        None). When the queue is full and `item` is not more urgent than the
        least urgent waiter, `item` itself is refused: Shed is raised."""
        waiter = _Waiter(
            waiter_key(priority, next(self._seq), self._policy),
            item,
            asyncio.get_running_loop().create_future(),
        )
        shed: T | None = None
        if len(self._heap) >= self._max_queue:
            worst = max(self._heap)
            if not waiter < worst:
                raise Shed()
            self._heap.remove(worst)
            heapq.heapify(self._heap)
            if not worst.future.done():
                worst.future.set_exception(Shed())
            shed = worst.item
        heapq.heappush(self._heap, waiter)
        self.dispatch()
        return waiter.future, shed

    def dispatch(self) -> None:
        while self._heap and self.holders < self._capacity():
            waiter = heapq.heappop(self._heap)
            if waiter.future.done():
                continue
            self.holders += 1
            waiter.future.set_result(None)

    def release(self) -> None:
        self.holders = max(0, self.holders - 1)
        self.dispatch()

    def forget(self, item: T) -> None:
        """Drop a waiter that gave up (timeout, client gone)."""
        for w in self._heap:
            if w.item is item:
                self._heap.remove(w)
                heapq.heapify(self._heap)
                if not w.future.done():
                    w.future.cancel()
                return
