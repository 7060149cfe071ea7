"""What to do about one InferencePool: desired vs observed in, a plan out.

Pure: no I/O, no clock (the observation carries the time), no randomness. The
handlers gather `Observed`, call `reconcile`, and carry out the `Plan` with
server-side apply, deletes, one status patch and Events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from tandem.api import v1alpha1 as api
from tandem.operator.layout import scale_of
from tandem.operator.objects import Manifest, PoolRef
from tandem.operator.render import render, replicas_of
from tandem.operator.scaling_policy import autoscaled
from tandem.operator.status import keep_scaling_conditions, pool_status, with_transition_times

ObjectKey = tuple[str, str]  # (kind, name): unique among what a pool owns


def key_of(manifest: Manifest) -> ObjectKey:
    return manifest["kind"], manifest["metadata"]["name"]


@dataclass(frozen=True)
class Desired:
    pool: PoolRef
    spec: api.InferencePoolSpec
    default_image: str


@dataclass(frozen=True)
class Observed:
    """Objects owned by the pool (by owner uid), the pool's current status, and the time."""

    objects: Mapping[ObjectKey, Manifest]
    status: Mapping[str, Any]
    now: str  # RFC 3339, for condition transition times
    pods: Sequence[Manifest] = ()  # the pool's worker pods (read for autoscaled pools only)


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    apply: tuple[Manifest, ...] = ()
    delete: tuple[ObjectKey, ...] = ()
    status: Mapping[str, Any] | None = None  # None: the status is already right
    events: tuple[Event, ...] = field(default=())


def reconcile(desired: Desired, observed: Observed) -> Plan:
    scaled = autoscaled(desired.spec)
    scale = scale_of(desired.spec, observed.status, observed.pods) if scaled else None
    manifests = render(desired.pool, desired.spec, desired.default_image, scale)
    wanted = {key_of(m) for m in manifests}
    create = [m for m in manifests if key_of(m) not in observed.objects]
    update = [
        m
        for m in manifests
        if key_of(m) in observed.objects and not contains(observed.objects[key_of(m)], m)
    ]
    delete = tuple(sorted(k for k in observed.objects if k not in wanted))
    counts = replicas_of(desired.spec)
    if scale is not None:
        counts.update(prefill=scale.desired.prefill, decode=scale.desired.decode)
    status = pool_status(
        desired.pool.generation,
        counts,
        observed.objects,
        changing=bool(create or update or delete),
        pods=observed.pods if scaled else None,
    )
    if scaled:
        status = keep_scaling_conditions(status, observed.status)
    status = with_transition_times(status, observed.status, observed.now)
    changed = {key_of(m) for m in create + update}
    return Plan(
        apply=tuple(m for m in manifests if key_of(m) in changed),
        delete=delete,
        status=None if _same_status(status, observed.status) else status,
        events=_events(create, update, delete, status, observed.status),
    )


def _describe(manifests: list[Manifest]) -> str:
    return ", ".join(f"{kind} {name}" for kind, name in map(key_of, manifests))


def _events(
    create: list[Manifest],
    update: list[Manifest],
    delete: tuple[ObjectKey, ...],
    status: Mapping[str, Any],
    previous: Mapping[str, Any],
) -> tuple[Event, ...]:
    events: list[Event] = []
    if create:
        events.append(Event("Normal", "Created", f"created {_describe(create)}"))
    if update:
        text = f"applied the spec to {_describe(update)} (it differed)"
        events.append(Event("Normal", "Updated", text))
    if delete:
        text = ", ".join(f"{kind} {name}" for kind, name in delete)
        events.append(Event("Normal", "Deleted", f"deleted {text}, no longer in the spec"))
    ready, degraded = _condition(status, "Ready"), _condition(status, "Degraded")
    if ready and _became(ready, _condition(previous, "Ready")):
        events.append(Event("Normal", ready["reason"], ready["message"]))
    if degraded and _became(degraded, _condition(previous, "Degraded")):
        events.append(Event("Warning", degraded["reason"], degraded["message"]))
    return tuple(events)


def _became(now: Mapping[str, Any], before: Mapping[str, Any] | None) -> bool:
    """The condition turned True in this pass (Ready reached, Degraded entered)."""
    return now["status"] == "True" and (before is None or before.get("status") != "True")


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    return next((c for c in status.get("conditions") or () if c.get("type") == kind), None)


def _same_status(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    return all(old.get(k) == v for k, v in new.items())


def contains(observed: Any, desired: Any) -> bool:
    """Whether every field set in `desired` has that value in `observed`.

    The API server adds defaults (protocol, terminationMessagePath, ...) that the
    manifests leave out, so equality would report drift forever; lists must match
    item by item, and quantities compare by value ("1000m" == "1").
    """
    if isinstance(desired, dict):
        return isinstance(observed, dict) and all(
            k in observed and contains(observed[k], v) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(observed, list)
            and len(observed) == len(desired)
            and all(contains(o, d) for o, d in zip(observed, desired, strict=True))
        )
    if observed == desired:
        return True
    return (
        isinstance(desired, str) and isinstance(observed, str) and _same_quantity(observed, desired)
    )


_SUFFIX = {
    "m": Decimal("0.001"),
    "": Decimal(1),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
}


def _quantity(text: str) -> Decimal | None:
    number = text.rstrip("kMGTimn")
    suffix = text[len(number) :]
    if suffix not in _SUFFIX or not number:
        return None
    try:
        return Decimal(number) * _SUFFIX[suffix]
    except InvalidOperation:
        return None


def _same_quantity(a: str, b: str) -> bool:
    qa, qb = _quantity(a), _quantity(b)
    return qa is not None and qa == qb
