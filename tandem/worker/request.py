"""A request's state inside one engine (pure Python)."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from tandem.sampling import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"  # queued for (re)computation
    RUNNING = "running"  # holds blocks, scheduled every step
    RESERVED = "reserved"  # decode role: blocks held, KV arriving from a prefill worker
    FINISHED = "finished"


@dataclass(frozen=True)
class Urgency:
    """How urgent a request is (traffic control): higher priority first, then
    the earlier deadline (time.monotonic() of this engine) by which the first
    token is due."""

    priority: int = 0
    deadline: float = math.inf


NO_URGENCY = Urgency()


class Kind(enum.Enum):
    FULL = "full"  # prefill and decode here
    PREFILL_ONLY = "prefill_only"  # stop after the first token, ship KV
    REMOTE_PREFILL = "remote_prefill"  # KV imported, decode here


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival: int  # monotonically increasing admission counter (FCFS order)
    kind: Kind = Kind.FULL
    status: Status = Status.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    block_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_scheduled_tokens: int = 0  # tokens in the step being computed now
    num_cached_tokens: int = 0  # prompt tokens that came from the prefix cache (first admission)
    num_preemptions: int = 0
    finish_reason: str | None = None
    # Prefill-only requests: blocks before this index are not exported (the
    # decode side has them), and exported blocks so far.
    kv_skip_blocks: int = 0
    kv_sent_blocks: int = 0
    # Traffic control: higher priority is served first; the deadline (engine
    # clock, time.monotonic) orders equal priorities; enqueued_at (set by the
    # scheduler on admission) drives aging.
    priority: int = 0
    deadline: float = math.inf
    enqueued_at: float = 0.0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED
