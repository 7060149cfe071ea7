"""One request through the workers: colocated (Generate on a decode worker) or
disaggregated (Reserve on D, Prefill on P which pushes KV to D, Decode on D).

`Orchestrator.run` is an async iterator of `TokenEvent`s. Closing it early
(client gone, stop string hit) cancels the worker calls and sends Cancel to
every worker involved, so their blocks are freed at once rather than when a
reservation expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from typing import TypeVar

from tandem.router.errors import Unavailable, WorkerDown
from tandem.router.priority import PriorityClass
from tandem.router.registry import WorkerRegistry
from tandem.router.selection import (
    WorkerView,
    can_decode,
    can_prefill,
    disaggregate,
    pick_decode,
    pick_prefill,
)
from tandem.router.traffic import Ticket, TrafficController
from tandem.router.worker_client import NO_URGENCY, PrefillResult, TokenEvent, Urgency
from tandem.sampling import SamplingParams

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Deadline for the Load calls that ask for prefix-cache hits before routing.
PREFIX_PROBE_TIMEOUT_S = 0.25
#: Routings of one request: the first, and the retries after a refusal before its first token.
ROUTE_ATTEMPTS = 3


@dataclass(frozen=True)
class Job:
    request_id: str
    prompt: tuple[int, ...]
    params: SamplingParams
    priority: PriorityClass
    ttft_deadline: float | None  # time.monotonic() by which the first token is due
    timeout_s: float  # bound on the whole request (every worker call's deadline)


@dataclass(frozen=True)
class RoutingConfig:
    min_prompt_tokens: int = 256
    max_inflight_per_worker: int = 64
    request_timeout_s: float = 600.0
    max_prefills_per_worker: int = 8  # prompts in flight per prefill worker (the prompt gate)


class Orchestrator:
    def __init__(self, registry: WorkerRegistry, traffic: TrafficController, config: RoutingConfig) -> None:
        self._registry = registry
        self._traffic = traffic
        self._config = config
        self._background: set[asyncio.Task[None]] = set()

    def capacity(self) -> int:
        return self._config.max_inflight_per_worker * sum(1 for v in self._registry.views() if can_decode(v))

    def prompt_capacity(self) -> int:
        return self._config.max_prefills_per_worker * sum(1 for v in self._registry.views() if can_prefill(v))

    def urgency(self, job: Job) -> Urgency:
        """What the workers' schedulers order this job by; nothing under fcfs."""
        if self._traffic.policy == "fcfs":
            return NO_URGENCY
        return Urgency(job.priority.priority, job.ttft_deadline)

    def prefill_parallelism(self) -> int:
        views = self._registry.views()
        return max(1, sum(1 for v in views if can_prefill(v)) or sum(1 for v in views if can_decode(v)))

    async def run(self, job: Job) -> AsyncGenerator[TokenEvent, None]:
        if not any(can_decode(v) for v in self._registry.views()):
            raise Unavailable("no decode worker is reachable; try again shortly", retry_after_s=2)
        ticket = await self._traffic.admit(job.priority, len(job.prompt), job.ttft_deadline)
        refused: set[str] = set()
        try:
            for attempt in range(1, ROUTE_ATTEMPTS + 1):
                # Each routing has its own id on the workers: the fire-and-forget Cancel of a
                # refused attempt must not abort the next one on the same worker.
                tried = job if attempt == 1 else replace(job, request_id=f"{job.request_id}-r{attempt}")
                decode, prefill = await self._route(tried, refused)
                stream = (
                    self._disaggregated(tried, ticket, decode, prefill)
                    if prefill is not None
                    else self._colocated(tried, ticket, decode)
                )
                started = False
                try:
                    async with contextlib.aclosing(stream):
                        async for event in stream:
                            started = True
                            yield event
                    return
                except (WorkerDown, Unavailable) as exc:
                    # Refused before its first token (a worker that began draining or
                    # changed role since the last Load poll): nothing reached the client,
                    # so route it again, away from the workers that refused it.
                    if started or attempt == ROUTE_ATTEMPTS:
                        raise
                    if isinstance(exc, WorkerDown):
                        refused.add(exc.worker)
                    else:  # a refusal that names no worker: avoid both
                        refused |= {decode.name} | ({prefill.name} if prefill else set())
                    log.info("%s refused (%s); routing it again", job.request_id, exc)
        finally:
            self._traffic.release(ticket)

    async def _route(self, job: Job, refused: set[str]) -> tuple[WorkerView, WorkerView | None]:
        views = [v for v in self._registry.views() if v.name not in refused]
        decode = pick_decode(views, len(job.prompt), self._config.max_inflight_per_worker)
        if decode is None:
            raise Unavailable("no decode worker has room; try again shortly", retry_after_s=1)
        return decode, await self._choose_prefill(job, decode, refused)

    async def _choose_prefill(
        self, job: Job, decode: WorkerView, refused: AbstractSet[str] = frozenset()
    ) -> WorkerView | None:
        """A prefill worker when the prompt is long enough to ship, else None (colocated).
        The decode worker's own prefix-cache hit is learned from Reserve (skip_blocks),
        so no extra round trip is spent on it; prefill workers are asked for theirs only
        when there is a choice to make."""
        prefill_views = [v for v in self._registry.views() if can_prefill(v) and v.name not in refused]
        n = len(job.prompt)
        if not disaggregate(n, 0, self._config.min_prompt_tokens, bool(prefill_views)):
            return None
        hits: dict[str, int] = {}
        if len(prefill_views) > 1:
            found = await asyncio.gather(*(self._prefix_hits(v.name, job.prompt) for v in prefill_views))
            hits = {v.name: h for v, h in zip(prefill_views, found, strict=True)}
        return pick_prefill(prefill_views, n, hits)

    async def _prefix_hits(self, name: str, prompt: tuple[int, ...]) -> int:
        try:
            _, hits = await self._registry.client(name).load(prompt, timeout=PREFIX_PROBE_TIMEOUT_S)
        except Exception:  # a missing hint only makes routing less informed
            return 0
        return hits

    async def _colocated(self, job: Job, ticket: Ticket, decode: WorkerView) -> AsyncGenerator[TokenEvent, None]:
        client = self._registry.client(decode.name)
        done = False
        before = decode.inflight_prefill_tokens
        with self._registry.track(decode.name, len(job.prompt)) as prefilled:
            stream = client.generate(
                job.request_id, job.prompt, job.params, timeout=job.timeout_s, urgency=self.urgency(job)
            )
            try:
                async with contextlib.aclosing(stream):
                    first = True
                    async for event in stream:
                        if first and event.token_ids:
                            first = False
                            prefilled()
                            computed = event.num_prompt_tokens - event.num_cached_tokens
                            self._traffic.first_token(ticket, computed, decode.name, before)
                        done = event.finished
                        yield event
            except WorkerDown as exc:
                self._registry.mark_down(decode.name, str(exc))
                raise
            finally:
                if not done:
                    self._cancel(decode.name, job.request_id)

    async def _disaggregated(
        self, job: Job, ticket: Ticket, decode: WorkerView, prefill: WorkerView
    ) -> AsyncGenerator[TokenEvent, None]:
        d_client = self._registry.client(decode.name)
        started = time.monotonic()
        done = False
        with self._registry.track(decode.name):
            try:
                async with self._traffic.prompt_slot(ticket):
                    result = await self._remote_prefill(job, ticket, decode, prefill)
                if result is None:
                    # D's prefix cache made shipping pointless, or the prefill worker failed
                    # before the first token (nothing reached the client yet): serve the
                    # request colocated on D instead.
                    retry = replace(job, request_id=f"{job.request_id}-colocated")
                    async with contextlib.aclosing(self._colocated(retry, ticket, decode)) as events:
                        async for event in events:
                            done = event.finished
                            yield event
                    return
                first = result.first
                if first.finish_reason == "prefilled":
                    first = replace(first, finished=False, finish_reason=None)
                if first.finished:
                    # Done at its first token: no Decode will claim D's reservation, so free
                    # it now (before yielding: the consumer may stop right after this event).
                    self._cancel(decode.name, job.request_id)
                done = first.finished
                yield first
                if done:
                    return
                if len(first.token_ids) != 1:
                    raise WorkerDown(prefill.name, f"Prefill returned {len(first.token_ids)} tokens, not 1")
                stream = d_client.decode(
                    job.request_id, first.token_ids[0], timeout=max(1.0, job.timeout_s - (time.monotonic() - started))
                )
                async with contextlib.aclosing(stream):
                    async for event in self._watch(decode.name, stream):
                        # The decode stream's own counts start after the first token.
                        done = event.finished
                        yield replace(
                            event,
                            num_prompt_tokens=first.num_prompt_tokens,
                            num_cached_tokens=first.num_cached_tokens,
                        )
            finally:
                if not done:
                    self._cancel(decode.name, job.request_id)
                    self._cancel(prefill.name, job.request_id)

    async def _remote_prefill(
        self, job: Job, ticket: Ticket, decode: WorkerView, prefill: WorkerView
    ) -> PrefillResult | None:
        """Reserve on D, prefill on P (which ships the KV to D). None, after D's
        reservation has been released, when P failed or D turned out to hold enough
        of the prompt already."""
        d_client = self._registry.client(decode.name)
        p_client = self._registry.client(prefill.name)
        started = time.monotonic()
        urgency = self.urgency(job)
        before = next((v.inflight_prefill_tokens for v in self._registry.views() if v.name == prefill.name), 0)
        with self._registry.track(prefill.name, len(job.prompt)):
            reservation = await self._call(
                decode.name, d_client.reserve(job.request_id, job.prompt, job.params, urgency=urgency)
            )
            cached = reservation.skip_blocks * decode.block_size
            if not disaggregate(len(job.prompt), cached, self._config.min_prompt_tokens, True):
                # D already holds most of the prompt: computing the rest there beats shipping it.
                await d_client.cancel(job.request_id)
                return None
            try:
                result = await self._call(
                    prefill.name,
                    p_client.prefill(
                        job.request_id, job.prompt, job.params, decode.address, reservation,
                        timeout=max(1.0, job.timeout_s - (time.monotonic() - started)), urgency=urgency,
                    ),
                )
            except WorkerDown as exc:
                log.warning("prefill on %s failed (%s); serving %s colocated", prefill.name, exc, job.request_id)
                await d_client.cancel(job.request_id)
                return None
        first = result.first
        self._traffic.first_token(ticket, first.num_prompt_tokens - first.num_cached_tokens, prefill.name, before)
        return result

    async def _call(self, name: str, coro: Awaitable[T]) -> T:
        try:
            return await coro
        except WorkerDown as exc:
            self._registry.mark_down(name, str(exc))
            raise

    async def _watch(self, name: str, stream: AsyncGenerator[TokenEvent, None]) -> AsyncGenerator[TokenEvent, None]:
        try:
            async for event in stream:
                yield event
        except WorkerDown as exc:
            self._registry.mark_down(name, str(exc))
            raise

    def _cancel(self, name: str, request_id: str) -> None:
        """Tell a worker to free the request now; fire and forget (we may be being cancelled)."""
        try:
            client = self._registry.client(name)
        except KeyError:
            return
        task = asyncio.get_running_loop().create_task(client.cancel(request_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
