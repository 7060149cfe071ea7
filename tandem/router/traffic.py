"""Traffic control: one queue per priority class, served in priority order,
with a bound on requests in flight, and deadline-aware admission.

`TrafficController.admit` either returns a `Ticket` (the request may now pick
a worker) or raises: `DeadlineRejected` (HTTP 429) when its deadline cannot be
met, `Unavailable` (503) when it waited longer than the queue timeout.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tandem.router.admission import Backlog, PrefillRate, decide
from tandem.router.errors import DeadlineRejected, Unavailable
from tandem.router.metrics import RouterMetrics
from tandem.router.priority import PriorityClass


@dataclass
class Ticket:
    priority: PriorityClass
    prompt_tokens: int
    deadline: float | None  # time.monotonic() by which the first token is due
    enqueued_at: float
    granted_at: float = 0.0
    prefilling: bool = True
    released: bool = False


@dataclass(order=True)
class _Waiter:
    key: tuple[int, int]
    ticket: Ticket = field(compare=False)
    future: asyncio.Future[None] = field(compare=False)


class TrafficController:
    def __init__(
        self,
        capacity: Callable[[], int],
        prefill_workers: Callable[[], int],
        metrics: RouterMetrics,
        queue_timeout_s: float = 30.0,
    ) -> None:
        self._capacity = capacity
        self._prefill_workers = prefill_workers
        self._metrics = metrics
        self._queue_timeout_s = queue_timeout_s
        self._heap: list[_Waiter] = []
        self._seq = itertools.count()
        self._inflight: set[int] = set()
        self._tickets: dict[int, Ticket] = {}
        self.rate = PrefillRate()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def backlog(self, priority: int) -> Backlog:
        queued = sum(w.ticket.prompt_tokens for w in self._heap if w.ticket.priority.priority >= priority)
        running = sum(t.prompt_tokens for t in self._tickets.values() if t.prefilling)
        return Backlog(queued + running, self._prefill_workers())

    async def admit(self, cls: PriorityClass, prompt_tokens: int, deadline: float | None) -> Ticket:
        now = time.monotonic()
        self._check_deadline(cls, prompt_tokens, deadline, now)
        ticket = Ticket(cls, prompt_tokens, deadline, now)
        waiter = _Waiter((-cls.priority, next(self._seq)), ticket, asyncio.get_running_loop().create_future())
        heapq.heappush(self._heap, waiter)
        self._gauge(cls)
        self._dispatch()
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), self._queue_timeout_s)
        except TimeoutError:
            self._forget(waiter)
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(ticket)  # granted in the same loop turn the timeout fired
            raise Unavailable(
                f"no capacity: waited {self._queue_timeout_s:.0f} s in the {cls.name!r} queue",
                retry_after_s=5,
            ) from None
        except asyncio.CancelledError:
            self._forget(waiter)
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(ticket)
            raise
        # Queueing took time; re-check so a request is shed rather than served late.
        try:
            self._check_deadline(cls, prompt_tokens, deadline, time.monotonic(), queued=True)
        except DeadlineRejected:
            self.release(ticket)
            raise
        return ticket

    def first_token(self, ticket: Ticket, computed_tokens: int) -> None:
        """The prefill is over: learn from it and drop it from the backlog."""
        if ticket.prefilling:
            ticket.prefilling = False
            self.rate = self.rate.learn(computed_tokens, time.monotonic() - ticket.granted_at)

    def release(self, ticket: Ticket) -> None:
        if ticket.released:
            return
        ticket.released = True
        self._inflight.discard(id(ticket))
        self._tickets.pop(id(ticket), None)
        self._dispatch()

    def kick(self) -> None:
        """Capacity may have grown (a worker came back): serve queued requests."""
        self._dispatch()

    def _check_deadline(
        self, cls: PriorityClass, tokens: int, deadline: float | None, now: float, queued: bool = False
    ) -> None:
        if deadline is None:
            return
        backlog = Backlog(0, 1) if queued else self.backlog(cls.priority)
        decision = decide(self.rate, backlog, tokens, deadline - now)
        if not decision.admit:
            where = "after queueing, " if queued else ""
            raise DeadlineRejected(f"{where}{decision.reason}", param="priority", code="deadline_unmeetable")

    def _dispatch(self) -> None:
        while self._heap and len(self._inflight) < self._capacity():
            waiter = heapq.heappop(self._heap)
            self._gauge(waiter.ticket.priority)
            if waiter.future.done():
                continue
            waiter.ticket.granted_at = time.monotonic()
            self._inflight.add(id(waiter.ticket))
            self._tickets[id(waiter.ticket)] = waiter.ticket
            waiter.future.set_result(None)

    def _forget(self, waiter: _Waiter) -> None:
        if waiter in self._heap:
            self._heap.remove(waiter)
            heapq.heapify(self._heap)
        if not waiter.future.done():
            waiter.future.cancel()
        self._gauge(waiter.ticket.priority)

    def _gauge(self, cls: PriorityClass) -> None:
        depth = sum(1 for w in self._heap if w.ticket.priority.name == cls.name)
        self._metrics.queue_depth.labels(priority=cls.name).set(depth)
