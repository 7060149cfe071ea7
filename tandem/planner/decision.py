"""What the planner decides, and the little it remembers between calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Action = Literal["none", "scale", "flip", "hold", "degraded"]


@dataclass(frozen=True)
class Recommendation:
    """The split the signals asked for at one moment, before stabilization."""

    at: float
    prefill: int
    decode: int


@dataclass(frozen=True)
class PlannerState:
    """Carried from one call to the next by the caller (in memory, or in the
    pool's status so that an operator restart resumes where it was)."""

    recommendations: tuple[Recommendation, ...] = ()
    last_change_at: float | None = None


@dataclass(frozen=True)
class Flip:
    worker: str
    from_role: str
    to_role: str


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    prefill: int  # desired live workers per role once this decision is carried out
    decode: int
    flips: tuple[Flip, ...] = ()  # drain, SetRole, rejoin (no reload)
    remove: tuple[str, ...] = ()  # drain, then delete
    add_prefill: int = 0  # new workers to start
    add_decode: int = 0
    limited: str = ""  # why a bound (maxReplicas, maxGPUs) held the pool back; "" if none
    pressure: dict[str, float] = field(default_factory=dict)  # per role, 1.0 = at target
    state: PlannerState = PlannerState()

    @property
    def changes(self) -> bool:
        return bool(self.flips or self.remove or self.add_prefill or self.add_decode)
