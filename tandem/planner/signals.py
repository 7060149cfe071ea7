"""What the planner sees of a pool at one moment (frozen, built by the callers).

Every figure is already a rate or a fraction over the caller's scrape window:
the planner has no clock of its own beyond the `now` it is given. A figure the
source could not provide is None; the planner says which one it missed and
makes no decision on a guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("prefill", "decode")


@dataclass(frozen=True)
class WorkerSignal:
    """One worker, from its own /metrics (or the simulator's bookkeeping)."""

    name: str
    role: str  # prefill | decode | both (the role it serves right now)
    ready: bool = True
    draining: bool = False  # admits nothing new (drain, flip or removal in progress)
    busy: float | None = None  # fraction of the window with model work on the device, 0..1
    running: int = 0  # requests in its running batch
    waiting: int = 0  # requests admitted but not yet scheduled
    kv_blocks_used: int = 0
    kv_blocks_total: int = 0
    flexible: bool = True  # may change role (fixed-role minimum workers may not)
    kv_blocks_reserved: int = 0  # of the used: held for prompts still prefilling elsewhere

    @property
    def kv_usage(self) -> float:
        """Blocks the worker's own streams hold. Reservations are left out: they wait on
        the prefill side, so counting them would make a prefill backlog look like
        decode demand and move capacity the wrong way."""
        own = max(0, self.kv_blocks_used - self.kv_blocks_reserved)
        return own / self.kv_blocks_total if self.kv_blocks_total else 0.0


@dataclass(frozen=True)
class PoolSignals:
    """The pool's demand and health over the last scrape window."""

    workers: tuple[WorkerSignal, ...]
    window_s: float  # length of the window the rates and percentiles cover
    queue_depth: int | None = None  # requests waiting in the routers' admission queues
    ttft_p99_s: float | None = None  # from the routers' histograms over the window
    tpot_p99_s: float | None = None
    requests: int = 0  # requests finished in the window (percentiles of fewer are noise)
    prefill_tokens_per_s: float | None = None  # prompt tokens computed, all workers
    decode_tokens_per_s: float | None = None  # output tokens computed, all workers
    missing: tuple[str, ...] = field(default=())  # sources that did not answer, by name

    def of_role(self, role: str) -> tuple[WorkerSignal, ...]:
        return tuple(w for w in self.workers if w.role == role)
