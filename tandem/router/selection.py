"""Worker selection (pure): which decode worker, whether to disaggregate, which
prefill worker. Inputs are snapshots; ties break by name so results are stable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Load:
    """A worker's load figures as its Load RPC reported them."""

    role: str
    waiting: int = 0
    running: int = 0
    kv_blocks_total: int = 0
    kv_blocks_used: int = 0
    kv_blocks_free: int = 0
    draining: bool = False


@dataclass(frozen=True)
class WorkerView:
    """What the router knows about one worker at one moment."""

    name: str
    address: str
    role: str  # prefill | decode | both
    up: bool
    load: Load | None = None
    inflight: int = 0  # requests this router has on it (fresher than the polled load)
    inflight_prefill_tokens: int = 0  # prompt tokens this router sent it that are not prefilled yet
    block_size: int = 16

    @property
    def usable(self) -> bool:
        return self.up and not (self.load is not None and self.load.draining)

    @property
    def busy(self) -> int:
        polled = 0 if self.load is None else self.load.running + self.load.waiting
        return max(self.inflight, polled)


def can_decode(w: WorkerView) -> bool:
    return w.usable and w.role in ("decode", "both")


def can_prefill(w: WorkerView) -> bool:
    return w.usable and w.role == "prefill"


def blocks_needed(prompt_tokens: int, block_size: int) -> int:
    return -(-(prompt_tokens + 1) // block_size)


def pick_decode(workers: Sequence[WorkerView], prompt_tokens: int, max_inflight: int) -> WorkerView | None:
    """The least busy decode-capable worker with room; prefer ones whose free KV blocks hold the prompt."""
    candidates = [w for w in workers if can_decode(w) and w.inflight < max_inflight]
    if not candidates:
        return None

    def score(w: WorkerView) -> tuple[bool, int, float, str]:
        free = w.load.kv_blocks_free if w.load is not None else 0
        total = w.load.kv_blocks_total if w.load is not None else 0
        fits = w.load is None or free >= blocks_needed(prompt_tokens, w.block_size)
        free_frac = free / total if total else 0.0
        return (not fits, w.busy, -free_frac, w.name)

    return min(candidates, key=score)


def disaggregate(prompt_tokens: int, decode_cached_tokens: int, min_prompt_tokens: int, have_prefill: bool) -> bool:
    """Prefill elsewhere only when the part of the prompt the decode worker lacks is long enough
    to be worth the KV transfer; short prompts run colocated on the decode worker."""
    if not have_prefill:
        return False
    return prompt_tokens - decode_cached_tokens >= min_prompt_tokens


def pick_prefill(
    workers: Sequence[WorkerView], prompt_tokens: int, prefix_hits: Mapping[str, int]
) -> WorkerView | None:
    """Minimize the prompt tokens a worker must compute before and for this request:
    its backlog sent by this router plus the part of the prompt not in its prefix cache."""
    candidates = [w for w in workers if can_prefill(w)]
    if not candidates:
        return None

    def cost(w: WorkerView) -> tuple[int, int, str]:
        uncached = prompt_tokens - min(prefix_hits.get(w.name, 0), prompt_tokens)
        waiting = w.load.waiting if w.load is not None else 0
        return (w.inflight_prefill_tokens + uncached, waiting, w.name)

    return min(candidates, key=cost)
