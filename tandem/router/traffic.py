"""Traffic control: priority classes across two gates, deadline-aware
admission from measured per-worker rates, and shedding of the least urgent.

- Decode slots (`admit`): at most `capacity()` requests in flight on the
  decode workers; waiters are served by priority (then arrival).
- Prompts (`prompt_slot`): at most `prompt_capacity()` prefills in flight on
  the prefill workers; a second priority queue, so long batch prompts wait for
  prefill workers without holding back an urgent request's decode slot.

Both queues are bounded (`max_queue`): when one is full the least urgent
waiter is shed (HTTP 429 with `Retry-After`, `Overloaded`) to make room for a
more urgent arrival, or the arrival itself is shed when nothing queued is less
urgent. A request whose TTFT deadline cannot be met is shed at once
(`DeadlineRejected`, 429). The estimate uses each prefill worker's own rate,
learned from its measured prefills (`first_token`). `policy="fcfs"` serves
both gates in arrival order (the comparison baseline); shedding then drops the
latest arrival.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from tandem.router.admission import (
    Backlog,
    PrefillRate,
    decide_measured,
    drain_seconds,
)
from tandem.router.errors import DeadlineRejected, Overloaded, Unavailable
from tandem.router.gate import PriorityGate, Shed
from tandem.router.metrics import RouterMetrics
from tandem.router.priority import PriorityClass

#: Bounds on the Retry-After a shed request is told (seconds).
RETRY_AFTER_MIN_S, RETRY_AFTER_MAX_S = 1.0, 60.0


@dataclass
class Ticket:
    priority: PriorityClass
    prompt_tokens: int
    deadline: float | None  # time.monotonic() by which the first token is due
    enqueued_at: float
    granted_at: float = (
        0.0  # when its prefill could start: the decode slot (or prompt slot) was granted
    )
    prefilling: bool = True
    released: bool = False


@dataclass(frozen=True)
class TrafficSettings:
    queue_timeout_s: float = 30.0
    max_queue: int = 1024  # waiters per gate before the least urgent is shed
    policy: str = "priority"  # or "fcfs"

    def __post_init__(self) -> None:
        if self.policy not in ("priority", "fcfs"):
            raise ValueError(f"traffic policy must be priority or fcfs, got {self.policy!r}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {self.max_queue}")


class TrafficController:
    def __init__(
        self,
        capacity: Callable[[], int],
        prefill_workers: Callable[[], int],
        metrics: RouterMetrics,
        queue_timeout_s: float = 30.0,
        settings: TrafficSettings | None = None,
        prompt_capacity: Callable[[], int] | None = None,
    ) -> None:
        self.settings = settings or TrafficSettings(queue_timeout_s=queue_timeout_s)
        self._prefill_workers = prefill_workers
        self._metrics = metrics
        self._slots: PriorityGate[Ticket] = PriorityGate(
            capacity, self.settings.max_queue, self.settings.policy
        )
        self._prompts: PriorityGate[Ticket] = PriorityGate(
            prompt_capacity or (lambda: 1 << 30), self.settings.max_queue, self.settings.policy
        )
        self._tickets: dict[int, Ticket] = {}
        self.rate = PrefillRate()  # the prior, and the pool-wide figure when no worker is named
        self.rates: dict[str, PrefillRate] = {}  # measured, per prefill worker

    @property
    def policy(self) -> str:
        return self.settings.policy

    @property
    def inflight(self) -> int:
        return len(self._tickets)

    def backlog(self, priority: int) -> Backlog:
        """Prompt tokens that will be prefilled before a new request of `priority`:
        queued and in-flight prefills of equal or higher priority (workers order
        their own queues by priority too); with fcfs, all of them."""
        fcfs = self.settings.policy == "fcfs"

        def ahead(t: Ticket) -> bool:
            return fcfs or t.priority.priority >= priority

        queued = sum(t.prompt_tokens for t in self._slots.queued() if ahead(t))
        running = sum(t.prompt_tokens for t in self._tickets.values() if t.prefilling and ahead(t))
        return Backlog(queued + running, self._prefill_workers())

    # ----- decode slots ------------------------------------------------------
    async def admit(self, cls: PriorityClass, prompt_tokens: int, deadline: float | None) -> Ticket:
        now = time.monotonic()
        self._check_deadline(cls, prompt_tokens, deadline, now)
        ticket = Ticket(cls, prompt_tokens, deadline, now)
        await self._wait(self._slots, ticket, "decode")
        ticket.granted_at = time.monotonic()
        self._tickets[id(ticket)] = ticket
        # Queueing took time; re-check so a request is shed rather than served late.
        try:
            self._check_deadline(cls, prompt_tokens, deadline, time.monotonic(), queued=True)
        except DeadlineRejected:
            self.release(ticket)
            raise
        return ticket

    def release(self, ticket: Ticket) -> None:
        if ticket.released:
            return
        ticket.released = True
        if self._tickets.pop(id(ticket), None) is not None:
            self._slots.release()

    # ----- prompts on prefill workers ---------------------------------------
    @contextlib.asynccontextmanager
    async def prompt_slot(self, ticket: Ticket) -> AsyncIterator[None]:
        """Hold one of the prefill workers' prompt slots (priority-ordered)."""
        await self._wait(self._prompts, ticket, "prefill")
        ticket.granted_at = time.monotonic()  # the prefill's own time starts now (rate learning)
        try:
            yield
        finally:
            self._prompts.release()
            self._gauges(ticket.priority)

    # ----- learning ----------------------------------------------------------
    def first_token(
        self,
        ticket: Ticket,
        computed_tokens: int,
        worker: str | None = None,
        tokens_before: int = 0,
    ) -> None:
        """The prefill is over: learn the worker's rate from it (its own tokens
        and the `tokens_before` it had to work through first) and drop it from
        the backlog."""
        if not ticket.prefilling:
            return
        ticket.prefilling = False
        seconds = time.monotonic() - ticket.granted_at
        tokens = computed_tokens + max(0, tokens_before)
        self.rate = self.rate.learn(tokens, seconds)
        if worker is not None:
            self.rates[worker] = self.rates.get(worker, self.rate).learn(tokens, seconds)

    def kick(self) -> None:
        """Capacity may have grown (a worker came back): serve queued requests."""
        self._slots.dispatch()
        self._prompts.dispatch()

    # ----- helpers -----------------------------------------------------------
    async def _wait(self, gate: PriorityGate[Ticket], ticket: Ticket, phase: str) -> None:
        cls = ticket.priority
        priority = cls.priority
        try:
            future, shed = gate.enqueue(ticket, priority)
        except Shed:
            self._shed(cls, "queue_full")
            raise self._overloaded(cls, phase) from None
        if shed is not None:
            self._shed(shed.priority, "displaced")
        self._gauges(cls, shed.priority if shed else None)
        try:
            await asyncio.wait_for(asyncio.shield(future), self.settings.queue_timeout_s)
        except TimeoutError:
            gate.forget(ticket)
            if future.done() and not future.cancelled() and future.exception() is None:
                gate.release()  # granted in the same loop turn the timeout fired
            self._shed(cls, "timeout")
            raise Unavailable(
                f"no capacity: waited {self.settings.queue_timeout_s:.0f} s in the {cls.name!r} {phase} queue",
                retry_after_s=5,
            ) from None
        except Shed:
            raise self._overloaded(cls, phase) from None
        except asyncio.CancelledError:
            gate.forget(ticket)
            if future.done() and not future.cancelled() and future.exception() is None:
                gate.release()
            raise
        finally:
            self._gauges(cls)
        self._metrics.queue_wait.labels(priority=cls.name, phase=phase).observe(
            time.monotonic() - ticket.enqueued_at
        )

    def _overloaded(self, cls: PriorityClass, phase: str) -> Overloaded:
        return Overloaded(
            f"overloaded: the {phase} queue is full of requests at least as urgent as this "
            f"{cls.name!r} one; retry later",
            param="priority",
            code="overloaded",
            retry_after_s=self._retry_after(cls.priority),
        )

    def _retry_after(self, priority: int) -> float:
        backlog = self.backlog(priority)
        wait = drain_seconds(
            list(self.rates.values()), backlog.prefill_workers, self.rate, backlog.tokens_ahead
        )
        return min(RETRY_AFTER_MAX_S, max(RETRY_AFTER_MIN_S, wait))

    def _check_deadline(
        self,
        cls: PriorityClass,
        tokens: int,
        deadline: float | None,
        now: float,
        queued: bool = False,
    ) -> None:
        if deadline is None:
            return
        backlog = Backlog(0, 1) if queued else self.backlog(cls.priority)
        rates = list(self.rates.values())
        decision = decide_measured(
            rates, backlog.prefill_workers, self.rate, backlog.tokens_ahead, tokens, deadline - now
        )
        if not decision.admit:
            self._shed(cls, "deadline")
            where = "after queueing, " if queued else ""
            raise DeadlineRejected(
                f"{where}{decision.reason}",
                param="priority",
                code="deadline_unmeetable",
                retry_after_s=self._retry_after(cls.priority),
            )

    def _shed(self, cls: PriorityClass, reason: str) -> None:
        self._metrics.shed.labels(priority=cls.name, reason=reason).inc()

    def _gauges(self, *classes: PriorityClass | None) -> None:
        for cls in classes:
            if cls is None:
                continue
            for name, gate in (("decode", self._slots), ("prefill", self._prompts)):
                depth = sum(1 for t in gate.queued() if t.priority.name == cls.name)
                gauge = (
                    self._metrics.queue_depth
                    if name == "decode"
                    else self._metrics.prefill_queue_depth
                )
                gauge.labels(priority=cls.name).set(depth)
