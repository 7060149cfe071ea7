"""Continuous-batching scheduler with chunked prefill, prefix caching and
preemption by recompute. Pure Python (no torch): it decides, per step, which
tokens of which requests to compute and which KV blocks they write.

Policy (one token budget per step, as in vLLM's unified scheduler and Sarathi's
chunked prefill): running requests first, in arrival order (decodes take one
token each, an unfinished prefill takes the next chunk), then waiting requests
while budget and blocks last. When a running request needs a block and none is
free, the most recently arrived running request is preempted: its blocks are
freed and it goes back to the head of the queue to be recomputed later. No
request is ever dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from tandem.worker.block_pool import BlockPool
from tandem.worker.errors import NoCapacity
from tandem.worker.request import Request, Status


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 128

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens < 1:
            raise ValueError("max_num_batched_tokens must be >= 1")
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be >= 1")


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


class Scheduler:
    def __init__(self, config: SchedulerConfig, pool: BlockPool) -> None:
        self.config = config
        self.pool = pool
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}

    # ----- admission -----------------------------------------------------
    def add(self, req: Request) -> None:
        self.requests[req.request_id] = req
        self.waiting.append(req)

    def add_running(self, req: Request) -> None:
        """A request whose KV is already in place (decode after remote prefill)."""
        self.requests[req.request_id] = req
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

    # ----- scheduling ----------------------------------------------------
    def schedule(self) -> ScheduleOutput:
        budget = self.config.max_num_batched_tokens
        seqs: list[ScheduledSeq] = []
        preempted: list[str] = []
        scheduled: set[str] = set()

        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            if not self._grow(req, req.num_computed_tokens + n):
                victim = self._pick_victim(exclude=scheduled)
                if victim is None:
                    break  # nothing left to preempt but this one: it waits for a later step
                self._preempt(victim)
                preempted.append(victim.request_id)
                # Either req itself was the victim (the list shifted, so index i
                # now names the next request) or a later one was: retry req.
                continue
            seqs.append(self._seq(req, n))
            scheduled.add(req.request_id)
            budget -= n
            i += 1

        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            req = self.waiting[0]
            if req.num_computed_tokens == 0 and not req.block_ids:
                self._apply_prefix_hit(req)
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            if not self._grow(req, req.num_computed_tokens + n):
                self._release(req)  # give prefix-hit blocks back; retried next step
                req.num_computed_tokens = 0
                break
            self.waiting.popleft()
            req.status = Status.RUNNING
            self.running.append(req)
            seqs.append(self._seq(req, n))
            scheduled.add(req.request_id)
            budget -= n
        return ScheduleOutput(tuple(seqs), tuple(preempted))

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

    def _pick_victim(self, exclude: Iterable[str]) -> Request | None:
        excluded = set(exclude)
        for req in reversed(self.running):
            if req.request_id not in excluded:
                return req
        return None

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self._release(req)
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        req.status = Status.WAITING
        self.waiting.appendleft(req)

    def _release(self, req: Request) -> None:
        if req.block_ids:
            self.pool.free(req.block_ids)
            req.block_ids = []
        req.num_scheduled_tokens = 0

