"""Continuous-batching scheduler with chunked prefill, prefix caching,
priorities and preemption by recompute. Pure Python (no torch): it decides, per
step, which tokens of which requests to compute and which KV blocks they write.

Policy (one token budget per step, as in vLLM's unified scheduler and Sarathi's
chunked prefill):

1. Decode rows first, one token per running request that has its prompt
   computed, most urgent first: those more urgent than every pending prefill.
   When the TPOT SLO cannot hold for every row, `step_budget.split` keeps only
   the most urgent rows that fit; the others wait a step.
2. Prefill chunks next, within the share of the budget that `step_budget.split`
   leaves them (the TPOT SLO of the running decodes bounds it): unfinished
   prefills of running requests and waiting requests, in one order, so a
   running low-priority prefill yields its chunk to a more urgent arrival at
   the next step (it keeps its blocks and continues when budget is left).
3. The less urgent decode rows last, as many as the SLO and the budget still
   allow (`step_budget.extra_rows`): an interactive prompt is not held back
   by a batch request's decode, and batch decodes absorb an overload.

"Most urgent first" is the order (priority high first, then earliest deadline,
then arrival). Aging bounds starvation: once a request has been in the engine
`aging_s` seconds it is ordered ahead of every request that has not (aged ones
among themselves by arrival), and it is no longer preempted before them. With
`policy="fcfs"` the order is arrival alone.

When a running request needs a block and none is free, the running request
that comes last in that order (lowest priority, then latest) is preempted: its
blocks are freed and it waits to be recomputed later, its generated tokens
kept. Waiting requests never preempt running ones. No request is ever dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from tandem.worker.block_pool import BlockPool
from tandem.worker.errors import NoCapacity
from tandem.worker.request import Request, Status
from tandem.worker.step_budget import StepCost, StepPolicy, extra_rows, split

Policy = Literal["priority", "fcfs"]
POLICIES: tuple[Policy, ...] = ("priority", "fcfs")
#: Seconds in the engine after which a request is served ahead of all younger ones.
DEFAULT_AGING_S = 30.0


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 128
    policy: Policy = "priority"
    aging_s: float = DEFAULT_AGING_S
    step: StepPolicy = field(default_factory=StepPolicy)

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens < 1:
            raise ValueError("max_num_batched_tokens must be >= 1")
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be >= 1")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if not self.aging_s > 0:
            raise ValueError(f"aging_s must be > 0, got {self.aging_s}")


@dataclass(frozen=True)
class ScheduledSeq:
    request_id: str
    token_ids: tuple[int, ...]  # tokens to compute this step
    start_pos: int  # position of token_ids[0]
    block_ids: tuple[int, ...]  # all blocks of the sequence (covers start_pos + len(token_ids))
    sample: bool  # this step completes the known tokens: sample the next one


@dataclass(frozen=True)
class ScheduleOutput:
    seqs: tuple[ScheduledSeq, ...]
    preempted: tuple[str, ...] = ()

    @property
    def num_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.seqs)

    @property
    def decode_only(self) -> bool:
        return all(len(s.token_ids) == 1 for s in self.seqs)

    @property
    def num_decode_rows(self) -> int:
        return sum(1 for s in self.seqs if len(s.token_ids) == 1)


@dataclass
class _Step:
    budget: int
    seqs: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)
    scheduled: set[str] = field(default_factory=set)


Key = tuple[int, int, float, int]


def _remaining(req: Request) -> int:
    """Tokens to compute before the next sample: 1 for a decode row, more for a prefill."""
    return req.num_tokens - req.num_computed_tokens


class Scheduler:
    def __init__(
        self, config: SchedulerConfig, pool: BlockPool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self.pool = pool
        self.clock = clock
        self.waiting: list[Request] = []  # most urgent first as of the last schedule()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.cost = StepCost()

    # ----- admission -----------------------------------------------------
    def add(self, req: Request) -> None:
        self.requests[req.request_id] = req
        req.enqueued_at = self.clock()
        self.waiting.append(req)

    def add_running(self, req: Request) -> None:
        """A request whose KV is already in place (decode after remote prefill)."""
        self.requests[req.request_id] = req
        req.enqueued_at = self.clock()
        req.status = Status.RUNNING
        self.running.append(req)

    def abort(self, request_id: str) -> Request | None:
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        if req in self.waiting:
            self.waiting.remove(req)
        if req in self.running:
            self.running.remove(req)
        self._release(req)
        req.status = Status.FINISHED
        req.finish_reason = req.finish_reason or "abort"
        return req

    def finish(self, req: Request, reason: str) -> None:
        req.status = Status.FINISHED
        req.finish_reason = reason
        if req in self.running:
            self.running.remove(req)
        self.requests.pop(req.request_id, None)
        self._release(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ----- ordering ------------------------------------------------------
    def key(self, req: Request, now: float) -> Key:
        """Sort key, most urgent first: aged requests by arrival, then the rest
        by priority (high first), deadline, arrival."""
        if self.config.policy == "fcfs" or now - req.enqueued_at >= self.config.aging_s:
            return (0, 0, 0.0, req.arrival)
        return (1, -req.priority, req.deadline, req.arrival)

    # ----- scheduling ----------------------------------------------------
    def schedule(self) -> ScheduleOutput:
        now = self.clock()
        self.waiting.sort(key=lambda r: self.key(r, now))
        step = _Step(self.config.max_num_batched_tokens)
        decodes = sorted(
            (r for r in self.running if _remaining(r) == 1), key=lambda r: self.key(r, now)
        )
        prefills = self._prefill_order(step, now)
        # Decodes more urgent than every pending prefill come first; the others only
        # after the prefills, in whatever the TPOT SLO and the budget still leave.
        top = self.key(prefills[0], now) if prefills else None
        urgent = [r for r in decodes if top is None or self.key(r, now) < top]
        pending = sum(_remaining(r) for r in prefills)
        share = split(self.config.step, self.cost, len(urgent), step.budget, pending)
        self._decode_rows(urgent, share.decode_rows, step, now)
        left = step.budget
        step.budget = min(step.budget, share.prefill_tokens)
        self._schedule_prefills(prefills, step, now)
        step.budget = left - (min(left, share.prefill_tokens) - step.budget)
        rows, tokens = len(step.seqs), sum(len(q.token_ids) for q in step.seqs)
        more = extra_rows(self.config.step, self.cost, share, rows, tokens - rows, step.budget)
        self._decode_rows(decodes[len(urgent) :], more, step, now)
        return ScheduleOutput(tuple(step.seqs), tuple(step.preempted))

    def _decode_rows(self, decodes: list[Request], limit: int, step: _Step, now: float) -> None:
        taken = 0
        for req in decodes:
            if step.budget <= 0 or taken >= limit:
                return  # the least urgent decodes wait this step (budget, or the TPOT SLO)
            if req in self.running and self._make_room(req, 1, step, now):
                self._take(req, 1, step)
                taken += 1

    def observe(self, sched: ScheduleOutput, seconds: float) -> None:
        """Learn the step-time model from one executed step."""
        rows = sched.num_decode_rows
        self.cost = self.cost.learn(rows, sched.num_tokens - rows, seconds)

    def _prefill_order(self, step: _Step, now: float) -> list[Request]:
        """Unfinished prefills of running requests and waiting requests, most urgent first."""
        partial = [
            r for r in self.running if r.request_id not in step.scheduled and _remaining(r) > 1
        ]
        return sorted(partial + self.waiting, key=lambda r: self.key(r, now))

    def _schedule_prefills(self, prefills: list[Request], step: _Step, now: float) -> None:
        for req in prefills:
            if step.budget <= 0:
                return
            if req.status is Status.RUNNING:
                if req not in self.running:
                    continue  # preempted earlier in this step
                n = min(req.num_tokens - req.num_computed_tokens, step.budget)
                if not self._make_room(req, n, step, now):
                    return
                self._take(req, n, step)
            elif len(self.running) < self.config.max_num_seqs and not self._admit(req, step):
                return

    def _admit(self, req: Request, step: _Step) -> bool:
        """Start a waiting request's prefill; False when its blocks are not there."""
        if req.num_computed_tokens == 0 and not req.block_ids:
            self._apply_prefix_hit(req)
        n = min(req.num_tokens - req.num_computed_tokens, step.budget)
        if not self._grow(req, req.num_computed_tokens + n):
            self._release(req)  # give prefix-hit blocks back; retried next step
            req.num_computed_tokens = 0
            return False
        self.waiting.remove(req)
        req.status = Status.RUNNING
        self.running.append(req)
        self._take(req, n, step)
        return True

    def _make_room(self, req: Request, n: int, step: _Step, now: float) -> bool:
        """Blocks for n more tokens of a running request, preempting the least
        urgent unscheduled running request (possibly req itself) while short."""
        while not self._grow(req, req.num_computed_tokens + n):
            victim = self._pick_victim(step.scheduled, now)
            if victim is None:
                return False  # nothing left to preempt: req waits for a later step
            self._preempt(victim)
            step.preempted.append(victim.request_id)
            if victim is req:
                return False
        return True

    def _take(self, req: Request, n: int, step: _Step) -> None:
        step.seqs.append(self._seq(req, n))
        step.scheduled.add(req.request_id)
        step.budget -= n

    def update(self, sampled: dict[str, int]) -> list[Request]:
        """Record the tokens computed by the last schedule() and the sampled
        ones; return requests that got a new token (checked for stops by the
        caller, which then calls finish())."""
        out: list[Request] = []
        for req in list(self.running):
            pending = req.num_scheduled_tokens
            if not pending:
                continue
            req.num_scheduled_tokens = 0
            before = req.num_computed_tokens
            req.num_computed_tokens += pending
            self._cache_full_blocks(req, before)
            tok = sampled.get(req.request_id)
            if tok is not None:
                req.output_token_ids.append(tok)
                out.append(req)
        return out

    # ----- helpers -------------------------------------------------------
    def _seq(self, req: Request, n: int) -> ScheduledSeq:
        start = req.num_computed_tokens
        req.num_scheduled_tokens = n
        return ScheduledSeq(
            request_id=req.request_id,
            token_ids=tuple(req.all_token_ids[start : start + n]),
            start_pos=start,
            block_ids=tuple(req.block_ids),
            sample=start + n == req.num_tokens,
        )

    def _grow(self, req: Request, num_tokens: int) -> bool:
        need = -(-num_tokens // self.pool.block_size) - len(req.block_ids)
        if need <= 0:
            return True
        try:
            req.block_ids.extend(self.pool.allocate(need))
        except NoCapacity:
            return False
        return True

    def _apply_prefix_hit(self, req: Request) -> None:
        # Keep at least one token to compute: the last position yields the logits.
        tokens = req.all_token_ids
        hits = self.pool.match_prefix(tokens, max_blocks=(len(tokens) - 1) // self.pool.block_size)
        if hits:
            self.pool.take(hits)
            req.block_ids = list(hits)
            req.num_computed_tokens = len(hits) * self.pool.block_size
        if req.num_preemptions == 0:
            req.num_cached_tokens = req.num_computed_tokens

    def _cache_full_blocks(self, req: Request, before: int) -> None:
        bs = self.pool.block_size
        # Only prompt tokens and generated tokens whose KV is computed are final.
        start, end = before // bs, req.num_computed_tokens // bs
        if end > start:
            self.pool.cache_blocks(req.block_ids, req.all_token_ids, start, end)

    def _pick_victim(self, scheduled: set[str], now: float) -> Request | None:
        candidates = [r for r in self.running if r.request_id not in scheduled]
        return max(candidates, key=lambda r: self.key(r, now), default=None)

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self._release(req)
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        req.status = Status.WAITING
        self.waiting.insert(0, req)

    def _release(self, req: Request) -> None:
        if req.block_ids:
            self.pool.free(req.block_ids)
            req.block_ids = []
        req.num_scheduled_tokens = 0
