"""One simulated worker: a continuous-batching engine with a per-step token budget,
chunked prefill and a paged KV pool (the worker's own `BlockPool`).

Decode runs are played in segments: while no request joins or leaves the batch,
k decode steps cost k x A + B x k(k-1)/2 (A: the first step's time, B: the growth
per step of the context read), so one event covers them all. A request that
arrives mid-segment cuts it at the end of the step in progress, as a real
engine takes new work only at a step boundary. Steps never overlap on one
worker, so its busy time never exceeds the time simulated.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

from tandem.sim.cost import CostModel
from tandem.worker.block_pool import BlockPool


@dataclass(eq=False, slots=True)
class Job:
    """One request's mutable state as it moves through the pool."""

    rid: int
    arrival_s: float
    input_tokens: int
    output_tokens: int
    unit_ids: list[int]  # prompt's cacheable units (empty: nothing shared)
    decode_worker: SimWorker | None = None
    prefill_worker: SimWorker | None = None
    d_blocks: list[int] = field(default_factory=list)  # units held on the decode worker
    p_blocks: list[int] = field(default_factory=list)  # units held on the prefill worker
    d_cached_tokens: int = 0
    cached_tokens: int = 0  # prefix hit on the worker that prefills it
    prefill_done: int = 0  # tokens computed so far (after the hit)
    prefill_started_s: float = -1.0
    prefill_compute_s: float = 0.0
    first_token_s: float = -1.0
    finish_s: float = -1.0
    outcome: str = ""  # "" in flight; "ok"; or the reason it was rejected

    @property
    def prefill_left(self) -> int:
        return self.input_tokens - self.cached_tokens - self.prefill_done


@dataclass(slots=True)
class Segment:
    start_s: float
    end_s: float
    steps: int  # decode steps in the segment (1 for a step with prefill)
    a_s: float  # the first step's time
    b_s: float  # growth of the step time per step
    chunks: list[tuple[Job, int]]  # prefill chunks of a one-step segment
    version: int


class SimWorker:
    def __init__(self, index: int, role: str, cost: CostModel, unit_tokens: int, node: int) -> None:
        self.index = index
        self.name = f"w{index:04d}"
        self.role = role
        self.node = node
        self.state = "active"  # active | draining | flipping | parked
        self.target_role = role
        self.cost = cost
        self.unit_tokens = unit_tokens
        self.pool = BlockPool(max(1, cost.kv_capacity_tokens // unit_tokens), 1)
        self.prefill_queue: deque[Job] = deque()
        self.pending_joins: list[Job] = []
        self.steps = 0  # decode steps taken so far
        self.n_decode = 0
        self.ctx_base = 0  # sum over the batch of (context at join - steps at join)
        self._finish: list[
            tuple[int, int, int, Job]
        ] = []  # (step it ends at, rid, context share, job)
        self.segment: Segment | None = None
        self.version = 0
        self.busy_done_s = 0.0
        self.inflight = 0  # requests the router has placed here (as decode worker)
        self.inflight_prefill_tokens = 0
        self.reserved_units = 0  # KV units reserved here for prompts still prefilling elsewhere

    # ----- what the router and planner see --------------------------------
    @property
    def usable(self) -> bool:
        return self.state == "active"

    @property
    def waiting(self) -> int:
        return len(self.prefill_queue) + len(self.pending_joins)

    @property
    def running(self) -> int:
        return self.n_decode

    def idle(self) -> bool:
        return not (
            self.prefill_queue
            or self.pending_joins
            or self.n_decode
            or self.segment
            or self.inflight
        )

    def busy_s(self, now: float) -> float:
        seg = self.segment
        if seg is None:
            return self.busy_done_s
        return self.busy_done_s + max(0.0, min(now, seg.end_s) - seg.start_s)

    def context_tokens(self) -> int:
        return self.ctx_base + self.n_decode * self.steps

    # ----- planning ---------------------------------------------------------
    def plan(self, now: float) -> Segment | None:
        """The next segment from `now`, or None when there is nothing to do."""
        self._admit_joins()
        chunks = self._chunks() if self.prefill_queue else []
        n, ctx = self.n_decode, self.context_tokens()
        if chunks:
            tokens = sum(t for _, t in chunks)
            attn = sum(t * (j.cached_tokens + j.prefill_done + t / 2) for j, t in chunks)
            dur = self.cost.step_s(tokens, attn, n, ctx)
            seg = Segment(now, now + dur, 1 if n else 0, dur, 0.0, chunks, self.version)
        elif n:
            c = self.cost
            a = c.decode_s(n, ctx)
            b = c.decode_per_ctx_token_s * n
            k = max(1, self._finish[0][0] - self.steps)
            seg = Segment(now, now + k * a + b * k * (k - 1) / 2, k, a, b, [], self.version)
        else:
            return None
        self.segment = seg
        return seg

    def _admit_joins(self) -> None:
        room = self.cost.max_num_seqs - self.n_decode
        if not self.pending_joins or room <= 0:
            return
        joining, self.pending_joins = self.pending_joins[:room], self.pending_joins[room:]
        for job in joining:
            share = job.input_tokens + 1 - self.steps  # context: the prompt and the first token
            self.ctx_base += share
            self.n_decode += 1
            heapq.heappush(self._finish, (self.steps + job.output_tokens - 1, job.rid, share, job))

    def _chunks(self) -> list[tuple[Job, int]]:
        budget = self.cost.max_num_batched_tokens - self.n_decode
        seqs = self.cost.max_num_seqs - self.n_decode
        out: list[tuple[Job, int]] = []
        for job in self.prefill_queue:
            if budget <= 0 or seqs <= 0:
                break
            if job.decode_worker is not self and not job.p_blocks and not self._hold(job):
                break  # waits for KV blocks, first come first served
            take = min(job.prefill_left, budget)
            out.append((job, take))
            budget -= take
            seqs -= 1
        return out

    def _hold(self, job: Job) -> bool:
        """A prompt prefilled here for another worker: take its prefix hits and blocks for the rest."""
        unit = self.unit_tokens
        hits = (
            self.pool.match_prefix(job.unit_ids, (job.input_tokens - 1) // unit)
            if job.unit_ids
            else []
        )
        need = -(-job.input_tokens // unit) - len(hits)
        if self.pool.num_free - sum(1 for b in hits if self.pool.ref_count(b) == 0) < need:
            return False
        self.pool.take(hits)
        job.p_blocks = hits + self.pool.allocate(need)
        before = job.prefill_left
        job.cached_tokens = len(hits) * unit
        self.inflight_prefill_tokens += job.prefill_left - before
        return True

    def cut(self, now: float) -> float | None:
        """New work arrived: end the running decode segment at the step in progress.
        Returns the new end time when it moved (the caller re-arms its event)."""
        seg = self.segment
        if seg is None or seg.steps <= 1 or seg.chunks:
            return None
        done = _steps_within(seg.a_s, seg.b_s, now - seg.start_s)
        k = min(seg.steps, done + 1)
        if k >= seg.steps:
            return None
        self.version += 1
        seg.steps, seg.version = k, self.version
        seg.end_s = seg.start_s + k * seg.a_s + seg.b_s * k * (k - 1) / 2
        return seg.end_s

    def finish_segment(self) -> tuple[list[Job], list[Job]]:
        """Apply the segment that just ended: (prefills completed, requests finished)."""
        seg = self.segment
        assert seg is not None
        self.segment = None
        self.busy_done_s += seg.end_s - seg.start_s
        done_prefill: list[Job] = []
        for job, take in seg.chunks:
            job.prefill_done += take
            job.prefill_compute_s += seg.end_s - seg.start_s
            self.inflight_prefill_tokens -= take
            if job.prefill_left <= 0:
                done_prefill.append(job)
        if done_prefill:
            gone = {id(j) for j in done_prefill}
            self.prefill_queue = deque(j for j in self.prefill_queue if id(j) not in gone)
        self.steps += seg.steps
        finished: list[Job] = []
        while self._finish and self._finish[0][0] <= self.steps:
            _, _, share, job = heapq.heappop(self._finish)
            self.n_decode -= 1
            self.ctx_base -= share
            finished.append(job)
        return done_prefill, finished


def _steps_within(a: float, b: float, elapsed: float) -> int:
    """The most whole steps (step j costs a + b j) that fit in `elapsed` seconds."""
    if elapsed <= 0:
        return 0
    if b <= 0:
        k = int(elapsed / a)
    else:
        p = a - b / 2
        k = int((-p + math.sqrt(p * p + 2 * b * elapsed)) / b)
    while k > 0 and k * a + b * k * (k - 1) / 2 > elapsed:
        k -= 1
    while (k + 1) * a + b * (k + 1) * k / 2 <= elapsed:
        k += 1
    return k
