"""The planner's knobs (frozen, validated once; defaults are the documented ones).

Semantics follow the Kubernetes HorizontalPodAutoscaler where it has an answer:
a metric within `tolerance` of its target changes nothing, a scale-up must be
recommended for the whole up-window and a scale-down for the whole down-window
before it happens, and one decision moves at most a bounded step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RoleBounds:
    min_replicas: int = 1
    max_replicas: int | None = None  # None: bounded by the GPU budget only
    gpus_per_replica: int = 1

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ValueError(f"min_replicas must be >= 0, got {self.min_replicas}")
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})"
            )
        if self.gpus_per_replica < 0:
            raise ValueError(f"gpus_per_replica must be >= 0, got {self.gpus_per_replica}")

    def clamp(self, n: int) -> int:
        hi = self.max_replicas if self.max_replicas is not None else n
        return max(self.min_replicas, min(n, hi))


@dataclass(frozen=True)
class Policy:
    prefill: RoleBounds = RoleBounds()
    decode: RoleBounds = RoleBounds()
    max_gpus: int | None = None  # the pool's GPU budget (None: unbounded)
    role_switching: bool = True  # move capacity by flipping workers, not only add/remove
    ttft_slo_s: float | None = None  # p99 targets; None: that signal is not used
    tpot_slo_s: float | None = None
    target_busy: float = 0.8  # prefill workers' busy fraction at target
    target_kv_usage: float = 0.8  # decode workers' KV-block usage at target
    tolerance: float = 0.1  # |pressure - 1| within this changes nothing (HPA: 0.1)
    scale_up_window_s: float = 30.0  # a growth must be recommended this long
    scale_down_window_s: float = 120.0  # a shrink (or the donor side of a flip) this long
    cooldown_s: float = 30.0  # no change sooner than this after the last one
    min_requests: int = 20  # fewer finished requests in a window: latency signals are noise
    scale_up_step: int = 4  # growth per decision: max(this, 100% of current) (HPA)
    scale_down_fraction: float = 0.25  # shrink or flips per decision: max(1, this x current)
    # TTFT counts as prefill demand once prefill is this busy: bursts miss TTFT at modest
    # average busy, while an idle pool missing it on very long prompts gains nothing.
    ttft_min_busy: float = 0.4
    # The pool keeps all its workers (tandem serve, a fixed fleet): nothing is added or
    # removed, and the split follows the demand once the busier role's pressure passes
    # `rebalance_above`.
    hold_budget: bool = False
    rebalance_above: float = 0.5

    def __post_init__(self) -> None:
        for name in ("target_busy", "target_kv_usage", "ttft_min_busy", "rebalance_above"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {v}")
        for name in ("ttft_slo_s", "tpot_slo_s"):
            v = getattr(self, name)
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be > 0, got {v}")
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"tolerance must be in [0, 1), got {self.tolerance}")
        for name in ("scale_up_window_s", "scale_down_window_s", "cooldown_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.min_requests < 0 or self.scale_up_step < 1:
            raise ValueError("min_requests must be >= 0 and scale_up_step >= 1")
        if not 0 < self.scale_down_fraction <= 1:
            raise ValueError(
                f"scale_down_fraction must be in (0, 1], got {self.scale_down_fraction}"
            )
        floor = self.gpus(self.prefill.min_replicas, self.decode.min_replicas)
        if self.max_gpus is not None and self.max_gpus < floor:
            raise ValueError(f"max_gpus ({self.max_gpus}) must cover the minimums ({floor} GPUs)")

    def bounds(self, role: str) -> RoleBounds:
        return self.prefill if role == "prefill" else self.decode

    def gpus(self, prefill: int, decode: int) -> int:
        return prefill * self.prefill.gpus_per_replica + decode * self.decode.gpus_per_replica

    @property
    def history_s(self) -> float:
        return max(self.scale_up_window_s, self.scale_down_window_s)

    def up_limit(self, current: int) -> int:
        return current + max(self.scale_up_step, current)

    def down_step(self, current: int) -> int:
        return max(1, math.ceil(self.scale_down_fraction * current))
