"""A routed request as text: token events -> detokenized deltas with stop
strings applied, usage counted and the router's latency metrics recorded.
Both front doors (HTTP and gRPC) serve requests through `Generation.stream`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from tandem.router.errors import DeadlineRejected, RouterError, Unavailable, UpstreamFailed
from tandem.router.metrics import RouterMetrics
from tandem.router.orchestrator import Job, Orchestrator
from tandem.router.stop_strings import StopStrings


class Detokenizer(Protocol):
    def add(self, token_ids: Sequence[int]) -> str: ...

    def flush(self) -> str: ...


@dataclass(frozen=True)
class Delta:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None  # set on the last delta only
    prompt_tokens: int
    completion_tokens: int  # so far
    cached_tokens: int


def outcome_of(exc: BaseException) -> str:
    if isinstance(exc, DeadlineRejected):
        return "rejected"
    if isinstance(exc, Unavailable):
        return "unavailable"
    if isinstance(exc, UpstreamFailed):
        return "error"
    if isinstance(exc, RouterError) and exc.status < 500:
        return "invalid"
    return "error"


class Generation:
    def __init__(
        self,
        orchestrator: Orchestrator,
        detokenizer: Callable[[Sequence[int]], Detokenizer],
        metrics: RouterMetrics,
    ) -> None:
        self._orchestrator = orchestrator
        self._detokenizer = detokenizer
        self.metrics = metrics

    async def stream(self, job: Job, received_at: float) -> AsyncGenerator[Delta, None]:
        label = job.priority.name
        outcome = "cancelled"
        first_at: float | None = None
        completion = 0
        detok = self._detokenizer(job.prompt)
        stops = StopStrings(job.params.stop)
        events = self._orchestrator.run(job)
        try:
            async with contextlib.aclosing(events):
                async for event in events:
                    if event.error or event.finish_reason == "error":
                        raise UpstreamFailed(f"the worker failed the request: {event.error or 'unknown error'}")
                    if first_at is None and event.token_ids:
                        first_at = time.monotonic()
                        self.metrics.ttft.labels(priority=label).observe(first_at - received_at)
                    completion += len(event.token_ids)
                    text = stops.feed(detok.add(event.token_ids))
                    finish = event.finish_reason if event.finished else None
                    if stops.stopped:
                        finish = "stop"  # leaving the loop closes the worker stream (cancel)
                    elif finish is not None:
                        text += stops.feed(detok.flush()) + stops.flush()
                        finish = "stop" if stops.stopped else finish
                    if finish == "abort":
                        raise UpstreamFailed("the worker aborted the request")
                    if finish is not None:
                        outcome = "ok"  # before yielding: the consumer may stop right after
                    yield Delta(
                        text, event.token_ids, finish, event.num_prompt_tokens, completion, event.num_cached_tokens
                    )
                    if finish is not None:
                        break
            if outcome != "ok":
                raise UpstreamFailed("the worker's stream ended before the request finished")
        except Exception as exc:
            outcome = outcome_of(exc)
            raise
        finally:
            self._record(job, outcome, received_at, first_at, completion)

    def _record(self, job: Job, outcome: str, received_at: float, first_at: float | None, n: int) -> None:
        label = job.priority.name
        self.metrics.requests.labels(priority=label, outcome=outcome).inc()
        if outcome != "ok":
            return
        end = time.monotonic()
        self.metrics.e2e.labels(priority=label).observe(end - received_at)
        tpot = (end - first_at) / (n - 1) if first_at is not None and n > 1 else None
        if tpot is not None:
            self.metrics.tpot.labels(priority=label).observe(tpot)
        ttft = None if first_at is None else first_at - received_at
        for slo, limit, value in (("ttft", job.priority.ttft_slo_s, ttft), ("tpot", job.priority.tpot_slo_s, tpot)):
            if limit is not None and value is not None:
                met = "met" if value <= limit else "missed"
                self.metrics.slo.labels(priority=label, slo=slo, outcome=met).inc()
