"""The discrete-event simulation of one pool: router, workers, planner.

Events sit in one heap ordered by (time, sequence number), so equal times keep
the order they were scheduled in and every run is deterministic. Arrivals come
from the sorted trace without going through the heap.

The policy code is Tandem's own, imported: `tandem.router.selection`
(pick_decode, disaggregate, pick_prefill), `tandem.router.admission` (the
deadline check and the learned prefill rate), `tandem.worker.block_pool` (KV
blocks and prefix-cache hits, LRU), and `tandem.planner.plan` fed with
`PoolSignals` built as the scraper builds them (busy over the window, KV
usage, running/waiting, TTFT/TPOT p99 from the router's histogram buckets
through `tandem.planner.scrape.quantile`).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

from tandem.planner import (
    Decision,
    PlannerState,
    Policy,
    PoolSignals,
    RoleBounds,
    WorkerSignal,
    plan,
)
from tandem.planner.scrape import quantile
from tandem.router.admission import Backlog, PrefillRate, decide
from tandem.router.metrics import _LATENCY_BUCKETS, _TPOT_BUCKETS  # the buckets the router exports
from tandem.router.selection import Load, WorkerView, disaggregate, pick_decode, pick_prefill
from tandem.sim.config import SimConfig
from tandem.sim.cost import CostModel
from tandem.sim.trace import HASH_BLOCK_TOKENS, SimRequest
from tandem.sim.worker import Job, SimWorker

_SEG_END, _FIRST_TOKEN, _TICK, _FLIP_DONE = 0, 1, 2, 3


@dataclass
class Sample:
    """One planner interval of the run, for the time series and the PNG."""

    t_s: float
    busy: dict[str, float]  # mean busy fraction per role over the interval
    workers: dict[str, int]
    queue: dict[str, int]  # router queue; prefills waiting; decodes waiting to join
    kv_usage: dict[str, float]


@dataclass
class Outcome:
    """Everything the report needs from one run."""

    jobs: list[Job]
    end_s: float
    busy_s: dict[str, float]  # busy seconds per role, summed over the run
    role_s: dict[str, float]  # worker-seconds spent in each role (parked and flipping apart)
    samples: list[Sample]
    flips: int
    decisions: list[str] = field(default_factory=list)
    drain_s: list[float] = field(default_factory=list)


class _Histogram:
    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = [*bounds, float("inf")]
        self.counts = [0.0] * len(self.bounds)

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, v)] += 1

    def cumulative(self) -> dict[float, float]:
        return dict(zip(self.bounds, itertools.accumulate(self.counts), strict=True))


class Simulation:
    def __init__(self, cfg: SimConfig, cost: CostModel, requests: Sequence[SimRequest]) -> None:
        self.cfg, self.cost, self.requests = cfg, cost, requests
        roles = ["both"] * cfg.gpus if cfg.policy == "colocated" else (
            ["prefill"] * cfg.prefill_workers + ["decode"] * (cfg.gpus - cfg.prefill_workers))  # fmt: skip
        self.workers = [
            SimWorker(i, r, cost, cfg.unit_tokens, i // cfg.gpus_per_node)
            for i, r in enumerate(roles)
        ]
        self.by_name = {w.name: w for w in self.workers}
        self.events: list[tuple[float, int, int, object]] = []
        self.seq = itertools.count()
        self.now = 0.0
        self.queue: deque[Job] = deque()  # the router's admission queue
        self.queued_tokens = 0
        self.prefilling_tokens = 0
        self.inflight = 0
        self.rate = PrefillRate()
        self.jobs: list[Job] = []
        self.ttft_hist, self.tpot_hist = _Histogram(_LATENCY_BUCKETS), _Histogram(_TPOT_BUCKETS)
        self.finished_in_window = 0
        self.prefix_owner: dict[int, SimWorker] = {}  # first prefix unit -> last prefill worker
        self.policy = Policy(
            prefill=RoleBounds(min_replicas=1),
            decode=RoleBounds(min_replicas=1),
            max_gpus=max(2, cfg.gpus),
            ttft_slo_s=cfg.ttft_slo_s,
            tpot_slo_s=cfg.tpot_slo_s,
            # A pool that keeps its GPUs rebalances them instead of asking for removals.
            hold_budget=cfg.keep_gpus,
        )  # fmt: skip  (used by the adaptive policy only)
        self.planner_state = PlannerState()
        self.flips = 0
        self.ignored_removals = 0
        self.decisions: list[str] = []
        self.samples: list[Sample] = []
        self.drain_s: list[float] = []
        self._drain_started: dict[str, float] = {}
        self.role_s = {"prefill": 0.0, "decode": 0.0, "both": 0.0, "parked": 0.0, "flipping": 0.0}
        self.busy_role = {"prefill": 0.0, "decode": 0.0, "both": 0.0}
        self._last_busy = [0.0] * len(self.workers)  # at the last tick (window busy fraction)
        self._busy_mark = [0.0] * len(self.workers)  # at the last role accounting
        self._roles_at = 0.0
        self._last_tick = 0.0
        self._last_ttft = self.ttft_hist.cumulative()
        self._last_tpot = self.tpot_hist.cumulative()
        self.sub = HASH_BLOCK_TOKENS // cfg.unit_tokens
        self._refresh_roles()

    # ----- the loop -----------------------------------------------------------
    def run(self, progress: Callable[[int, int], None] | None = None) -> Outcome:
        reqs, i, n = self.requests, 0, len(self.requests)
        self._push(self.cfg.interval_s, _TICK, None)
        while i < n or self.inflight or self.queue:
            if i < n and (not self.events or reqs[i].arrival_s <= self.events[0][0]):
                self.now = max(self.now, reqs[i].arrival_s)
                self._arrive(i, reqs[i])
                i += 1
                if progress is not None and i % 4096 == 0:
                    progress(i, n)
                continue
            t, _, kind, obj = heapq.heappop(self.events)
            self.now = t
            self._handle(kind, obj)
        self._account_roles(self.now)
        return Outcome(self.jobs, self.now, dict(self.busy_role), dict(self.role_s), self.samples,
                       self.flips, self.decisions, self.drain_s)  # fmt: skip

    def _push(self, t: float, kind: int, obj: object) -> None:
        heapq.heappush(self.events, (t, next(self.seq), kind, obj))

    def _handle(self, kind: int, obj: object) -> None:
        if kind == _SEG_END:
            w, version = cast(tuple[SimWorker, int], obj)
            seg = w.segment
            if seg is not None and seg.version == version and seg.end_s == self.now:
                self._segment_end(w)
        elif kind == _FIRST_TOKEN:
            self._first_token(obj)  # type: ignore[arg-type]
        elif kind == _TICK:
            self._tick()
        elif kind == _FLIP_DONE:
            self._flip_done(obj)  # type: ignore[arg-type]

    # ----- router -------------------------------------------------------------
    def _arrive(self, i: int, r: SimRequest) -> None:
        units = [h * self.sub + j for h in r.hash_ids for j in range(self.sub)][
            : r.input_tokens // self.cfg.unit_tokens
        ]
        job = Job(i, r.arrival_s, r.input_tokens, r.output_tokens, units)
        self.jobs.append(job)
        if self.cfg.shed:
            # The router's prefill_parallelism(): prefill workers, else the decode-capable ones.
            par = len(self._usable["prefill"]) or len(self._usable["decode"]) + len(
                self._usable["both"]
            )
            backlog = Backlog(self.queued_tokens + self.prefilling_tokens, max(1, par))
            if not decide(self.rate, backlog, r.input_tokens, self.cfg.ttft_slo_s).admit:
                job.outcome = "rejected: deadline (admission)"
                return
        self.queue.append(job)
        self.queued_tokens += r.input_tokens
        self._dispatch()

    def _refresh_roles(self) -> None:
        """Usable workers per role, rebuilt when a role or state changes (rarely)."""
        self._usable = {
            r: [w for w in self.workers if w.usable and w.role == r]
            for r in ("prefill", "decode", "both")
        }

    def _dispatch(self) -> None:
        cap = self.cfg.max_inflight_per_worker
        while self.queue:
            job = self.queue[0]
            if self.now - job.arrival_s > self.cfg.queue_timeout_s:
                self._drop_head("rejected: queue timeout")
                continue
            if self.cfg.shed and self.now > job.arrival_s:
                left = self.cfg.ttft_slo_s - (self.now - job.arrival_s)
                if not decide(self.rate, Backlog(0, 1), job.input_tokens, left).admit:
                    self._drop_head("rejected: deadline (after queueing)")
                    continue
            d = self._pick_decode(job, cap)
            if d is None or not self._reserve(d, job):
                return  # head of line waits for capacity
            self.queue.popleft()
            self.queued_tokens -= job.input_tokens
            self.inflight += 1
            d.inflight += 1
            self._route_prefill(d, job)

    def _drop_head(self, reason: str) -> None:
        job = self.queue.popleft()
        self.queued_tokens -= job.input_tokens
        job.outcome = reason

    def _view(self, w: SimWorker) -> WorkerView:
        load = Load(w.role, w.waiting, w.running, w.pool.num_blocks, w.pool.num_used, w.pool.num_free,
                    not w.usable)  # fmt: skip
        return WorkerView(w.name, w.name, w.role, True, load, w.inflight, w.inflight_prefill_tokens,
                          self.cfg.unit_tokens)  # fmt: skip

    def _candidates(
        self, roles: tuple[str, ...], key: Callable[[SimWorker], int]
    ) -> list[SimWorker]:
        ws = [w for r in roles for w in self._usable[r]]
        if len(ws) > self.cfg.shortlist:
            ws = heapq.nsmallest(self.cfg.shortlist, ws, key=key)
        return ws

    def _pick_decode(self, job: Job, cap: int) -> SimWorker | None:
        ws = self._candidates(("decode", "both"), lambda w: max(w.inflight, w.running + w.waiting))
        got = pick_decode([self._view(w) for w in ws], job.input_tokens, cap)
        return None if got is None else self.by_name[got.name]

    def _reserve(self, d: SimWorker, job: Job) -> bool:
        """Reserve: the decode worker takes its prefix hits and the rest of the request's KV."""
        unit = self.cfg.unit_tokens
        hits = (
            d.pool.match_prefix(job.unit_ids, (job.input_tokens - 1) // unit)
            if job.unit_ids
            else []
        )
        need = -(-(job.input_tokens + job.output_tokens) // unit) - len(hits)
        if d.pool.num_free - sum(1 for b in hits if d.pool.ref_count(b) == 0) < need:
            return False
        d.pool.take(hits)
        job.d_blocks = hits + d.pool.allocate(need)
        job.d_cached_tokens = len(hits) * unit
        job.decode_worker = d
        return True

    def _route_prefill(self, d: SimWorker, job: Job) -> None:
        have_prefill = bool(self._usable["prefill"])
        p = None
        if disaggregate(
            job.input_tokens, job.d_cached_tokens, self.cfg.min_prompt_tokens, have_prefill
        ):
            p = self._pick_prefill(job)
        if p is None:  # colocated on the decode worker, after its own prefix hit
            job.cached_tokens = job.d_cached_tokens
            job.prefill_worker = d
        else:
            job.prefill_worker = p
            d.reserved_units += len(job.d_blocks)  # held for a prompt prefilling elsewhere
        w = job.prefill_worker
        assert w is not None
        self.prefilling_tokens += job.input_tokens
        job.prefill_started_s = self.now
        w.inflight_prefill_tokens += job.prefill_left
        w.prefill_queue.append(job)
        self._kick(w)

    def _pick_prefill(self, job: Job) -> SimWorker | None:
        ws = self._candidates(("prefill",), lambda w: w.inflight_prefill_tokens)
        owner = self.prefix_owner.get(job.unit_ids[0]) if job.unit_ids else None
        if owner is not None and owner.usable and owner.role == "prefill" and owner not in ws:
            ws.append(owner)
        unit = self.cfg.unit_tokens
        hits = {w.name: len(w.pool.match_prefix(job.unit_ids, (job.input_tokens - 1) // unit)) * unit
                for w in ws} if job.unit_ids else {}  # fmt: skip
        got = pick_prefill([self._view(w) for w in ws], job.input_tokens, hits)
        if got is None:
            return None
        p = self.by_name[got.name]
        job.cached_tokens = hits.get(p.name, 0)  # an estimate until it holds its blocks there
        if job.unit_ids:
            self.prefix_owner[job.unit_ids[0]] = p
        return p

    # ----- workers --------------------------------------------------------------
    def _kick(self, w: SimWorker) -> None:
        if w.segment is None:
            seg = w.plan(self.now)
            if seg is not None:
                self._push(seg.end_s, _SEG_END, (w, seg.version))
        else:
            end = w.cut(self.now)
            if end is not None:
                self._push(end, _SEG_END, (w, w.version))

    def _segment_end(self, w: SimWorker) -> None:
        done, finished = w.finish_segment()
        for job in done:
            self._prefill_done(w, job)
        for job in finished:
            self._finish(job, w)
        if finished:
            self._dispatch()
        self._kick(w)
        if w.state == "draining" and w.idle():
            self._start_flip(w)

    def _prefill_done(self, w: SimWorker, job: Job) -> None:
        self.prefilling_tokens -= job.input_tokens
        computed = job.input_tokens - job.cached_tokens
        self.rate = self.rate.learn(computed, self.now - job.prefill_started_s)
        d = job.decode_worker
        assert d is not None
        if w is d:
            self._cache(d, job)
            self._first_token(job)
            return
        nbytes = (job.input_tokens - job.d_cached_tokens) * self.cost.kv_bytes_per_token
        xfer = self._transport(w, d).seconds(nbytes)
        # Layer by layer: shipping overlaps the compute of later layers; the last layer's share shows.
        exposed = max(xfer - job.prefill_compute_s, xfer / self.cost.layers)
        self._push(self.now + exposed, _FIRST_TOKEN, job)

    def _transport(self, p: SimWorker, d: SimWorker):  # type: ignore[no-untyped-def]
        name = self.cfg.transport
        if name == "auto":
            names = {t.name for t in self.cost.transports}
            local = "cuda_ipc" if "cuda_ipc" in names else "shm"
            name = local if p.node == d.node and local in names else "grpc"
        return self.cost.transport(name)

    def _cache(self, w: SimWorker, job: Job) -> None:
        blocks = job.d_blocks if w is job.decode_worker else job.p_blocks
        full = len(job.unit_ids)
        start = (
            job.d_cached_tokens if w is job.decode_worker else job.cached_tokens
        ) // self.cfg.unit_tokens
        if full > start:
            w.pool.cache_blocks(blocks, job.unit_ids, start, full)

    def _first_token(self, job: Job) -> None:
        job.first_token_s = self.now
        p, d = job.prefill_worker, job.decode_worker
        assert p is not None and d is not None
        if p is not d:
            d.reserved_units -= len(job.d_blocks)
            self._cache(p, job)
            p.pool.free(job.p_blocks)
            job.p_blocks = []
            self._cache(d, job)  # the imported blocks are the decode worker's prefix cache now
            if p.state == "draining" and p.idle():
                self._start_flip(p)
        self.ttft_hist.observe(self.now - job.arrival_s)
        if job.output_tokens <= 1:
            self._finish(job, d)
            self._dispatch()
            return
        d.pending_joins.append(job)
        self._kick(d)

    def _finish(self, job: Job, d: SimWorker) -> None:
        job.finish_s = self.now
        job.outcome = "ok"
        if job.output_tokens > 1:
            self.tpot_hist.observe((job.finish_s - job.first_token_s) / (job.output_tokens - 1))
        d.pool.free(job.d_blocks)
        job.d_blocks = []
        d.inflight -= 1
        self.inflight -= 1
        self.finished_in_window += 1

    # ----- planner ---------------------------------------------------------------
    def _tick(self) -> None:
        now, window = self.now, self.now - self._last_tick
        busy = [
            min(1.0, max(0.0, (w.busy_s(now) - self._last_busy[w.index]) / window))
            for w in self.workers
        ]
        self._sample(now, busy)
        if self.cfg.policy == "adaptive":
            self._decide(self._signals(window, busy), now)
        self._account_roles(now)
        for w in self.workers:
            self._last_busy[w.index] = w.busy_s(now)
        self._last_tick = now
        self._last_ttft, self._last_tpot = self.ttft_hist.cumulative(), self.tpot_hist.cumulative()
        self.finished_in_window = 0
        if self.queue:
            self._dispatch()  # a queue that only waits still times out
        self._push(now + self.cfg.interval_s, _TICK, None)

    def _account_roles(self, now: float) -> None:
        """Worker-seconds and busy seconds per role since the last call; called before
        every change of a worker's role or state, so each second lands where it was spent."""
        dt = now - self._roles_at
        for w in self.workers:
            key = w.role if w.state in ("active", "draining") else w.state
            self.role_s[key] += dt
            busy = w.busy_s(now)
            if key in self.busy_role:
                self.busy_role[key] += busy - self._busy_mark[w.index]
            self._busy_mark[w.index] = busy
        self._roles_at = now

    def _signals(self, window: float, busy: list[float]) -> PoolSignals:
        ws = tuple(
            WorkerSignal(w.name, w.role, ready=w.state in ("active", "draining"), draining=w.state != "active",
                         busy=busy[w.index], running=w.running, waiting=w.waiting,
                         kv_blocks_used=w.pool.num_used, kv_blocks_total=w.pool.num_blocks,
                         kv_blocks_reserved=w.reserved_units)
            for w in self.workers if w.state != "parked"
        )  # fmt: skip
        ttft = quantile(0.99, self._last_ttft, self.ttft_hist.cumulative())
        tpot = quantile(0.99, self._last_tpot, self.tpot_hist.cumulative())
        return PoolSignals(ws, window, len(self.queue), ttft, tpot, self.finished_in_window)

    def _decide(self, signals: PoolSignals, now: float) -> None:
        d: Decision = plan(self.policy, signals, self.planner_state, now)
        self.planner_state = d.state
        if not d.changes:
            return
        self.decisions.append(f"{now:.0f}s {d.action}: {d.reason}")
        for f in d.flips:
            self._drain(self.by_name[f.worker], f.to_role)
            self.flips += 1
        for name in d.remove:
            if self.cfg.keep_gpus:
                self.ignored_removals += 1  # the pool holds its GPUs: only flips move capacity
            else:
                self._drain(self.by_name[name], "parked")
        parked = [w for w in self.workers if w.state == "parked"]
        for role, k in (("prefill", d.add_prefill), ("decode", d.add_decode)):
            for w in parked[:k]:
                self._account_roles(now)
                w.state, w.target_role = "flipping", role
                self._push(now + self.cost.model_load_s, _FLIP_DONE, w)
            parked = parked[k:]

    def _drain(self, w: SimWorker, to: str) -> None:
        self._account_roles(self.now)
        w.state, w.target_role = "draining", to
        self._refresh_roles()
        self._drain_started[w.name] = self.now
        if w.idle():
            self._start_flip(w)

    def _start_flip(self, w: SimWorker) -> None:
        self._account_roles(self.now)
        self.drain_s.append(self.now - self._drain_started.pop(w.name, self.now))
        if w.target_role == "parked":
            w.state = "parked"
            return
        w.state = "flipping"
        self._push(self.now + self.cost.role_flip_s, _FLIP_DONE, w)

    def _flip_done(self, w: SimWorker) -> None:
        self._account_roles(self.now)
        w.role, w.state = w.target_role, "active"
        self._refresh_roles()
        self._dispatch()

    def _sample(self, now: float, busy: list[float]) -> None:
        roles = ("prefill", "decode", "both")
        by: dict[str, list[SimWorker]] = {
            r: [w for w in self.workers if w.role == r and w.state != "parked"] for r in roles
        }
        self.samples.append(Sample(
            now,
            {r: sum(busy[w.index] for w in by[r]) / len(by[r]) for r in roles if by[r]},
            {r: len(by[r]) for r in roles},
            {"router": len(self.queue),
             "prefill": sum(len(w.prefill_queue) for w in self.workers),
             "decode": sum(len(w.pending_joins) for w in self.workers)},
            {r: sum(w.pool.num_used / w.pool.num_blocks for w in by[r]) / len(by[r]) for r in roles if by[r]},
        ))  # fmt: skip
