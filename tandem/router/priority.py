"""Priority classes: how a request says how urgent it is.

A class has a name, a priority (higher is served first), an optional TTFT
SLO that admission control enforces and an optional TPOT SLO that the class's
SLO attainment is counted against. The CLI spells a list of them as
`NAME:PRIORITY[:TTFT_SLO[:TPOT_SLO]],...`, e.g. `interactive:100:1s:50ms,batch:10`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tandem.router.errors import BadRequest

PRIORITY_HEADER = "x-tandem-priority"


@dataclass(frozen=True)
class PriorityClass:
    name: str
    priority: int
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"priority class name {self.name!r} must be alphanumeric (- and _ allowed)")
        if self.ttft_slo_s is not None and not self.ttft_slo_s > 0:
            raise ValueError(f"priority class {self.name!r}: TTFT SLO must be > 0, got {self.ttft_slo_s}")
        if self.tpot_slo_s is not None and not self.tpot_slo_s > 0:
            raise ValueError(f"priority class {self.name!r}: TPOT SLO must be > 0, got {self.tpot_slo_s}")


DEFAULT_CLASSES = (PriorityClass("default", 0),)


def parse_duration(text: str) -> float:
    """`1s`, `250ms`, `0.5` (seconds) -> seconds."""
    t = text.strip().lower()
    scale = 1.0
    if t.endswith("ms"):
        t, scale = t[:-2], 1e-3
    elif t.endswith("s"):
        t = t[:-1]
    elif t.endswith("m"):
        t, scale = t[:-1], 60.0
    try:
        return float(t) * scale
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (examples: 1s, 250ms, 0.5)") from None


def parse_classes(spec: str) -> tuple[PriorityClass, ...]:
    """Parse `NAME:PRIORITY[:TTFT_SLO[:TPOT_SLO]],...`; names must be unique.
    An empty TTFT field (`batch:10::200ms`) sets only the TPOT SLO."""
    classes: list[PriorityClass] = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        parts = item.split(":")
        if len(parts) not in (2, 3, 4):
            raise ValueError(f"priority class {item!r}: expected NAME:PRIORITY[:TTFT_SLO[:TPOT_SLO]]")
        try:
            prio = int(parts[1])
        except ValueError:
            raise ValueError(f"priority class {item!r}: priority must be an integer") from None
        ttft = parse_duration(parts[2]) if len(parts) >= 3 and parts[2] else None
        tpot = parse_duration(parts[3]) if len(parts) == 4 and parts[3] else None
        classes.append(PriorityClass(parts[0], prio, ttft, tpot))
    if not classes:
        raise ValueError("at least one priority class is needed")
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise ValueError(f"priority class names must be unique: {names}")
    return tuple(classes)


def default_class(classes: tuple[PriorityClass, ...], name: str | None = None) -> PriorityClass:
    """The class for requests that name none: `name` if given, else the least urgent one,
    so that untagged traffic never overtakes traffic that asked for priority."""
    if name is not None:
        for c in classes:
            if c.name == name:
                return c
        raise ValueError(f"default priority class {name!r} is not among {[c.name for c in classes]}")
    return min(classes, key=lambda c: c.priority)


def resolve(
    classes: tuple[PriorityClass, ...],
    default: PriorityClass,
    headers: Mapping[str, str],
    body_value: str | None,
) -> PriorityClass:
    """The header wins over the body field; an unknown name is a 400 naming
    where it came from (the header or the body's `priority`)."""
    header = headers.get(PRIORITY_HEADER)
    name = header if header is not None else body_value
    if name is None:
        return default
    for c in classes:
        if c.name == name:
            return c
    raise BadRequest(
        f"unknown priority class {name!r}; known: {', '.join(c.name for c in classes)}",
        param=PRIORITY_HEADER if header is not None else "priority",
    )
