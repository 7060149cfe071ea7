"""The pool's pods as the scaling loop sees them (pure): which to scrape, what the
state machine and the planner are told about each.

Kubernetes knows which pods exist, are Ready, are flexible and what is in
flight on them (annotations); the workers' /metrics know their role, load and
busy time. A pod with a step in flight is reported to the planner as draining,
so it decides nothing new until the pool has settled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from tandem.operator.flips import PodView
from tandem.operator.layout import (
    FLIP_TO,
    PENDING,
    SCALE_DOWN,
    START_ROLE,
    WORKER_ROLES,
    is_flexible,
)
from tandem.operator.objects import ROLE_LABEL, Manifest
from tandem.planner import PoolSignals, WorkerSignal


def pod_ready(pod: Manifest) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def role_label(pod: Manifest) -> str:
    return str((pod["metadata"].get("labels") or {}).get(ROLE_LABEL, ""))


def deleting(pod: Manifest) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


def worker_pods(pods: Sequence[Manifest]) -> list[Manifest]:
    return [p for p in pods if role_label(p) in (*WORKER_ROLES, PENDING)]


def router_pods(pods: Sequence[Manifest]) -> list[Manifest]:
    return [p for p in pods if role_label(p) == "router" and pod_ready(p) and not deleting(p)]


def scraped(pod: Manifest) -> bool:
    """Pods whose /metrics the planner needs: Ready, serving a role, not going away."""
    return pod_ready(pod) and role_label(pod) in WORKER_ROLES and not deleting(pod)


@dataclass(frozen=True)
class WorkerReport:
    """What one worker's /metrics said (the role it serves, its requests in flight)."""

    role: str
    load: float


def pod_view(pod: Manifest, report: WorkerReport | None) -> PodView:
    notes = pod["metadata"].get("annotations") or {}
    return PodView(
        name=pod["metadata"]["name"],
        role=role_label(pod),
        flexible=is_flexible(pod),
        ready=pod_ready(pod),
        deleting=deleting(pod),
        flip_to=notes.get(FLIP_TO),
        scale_down=notes.get(SCALE_DOWN),
        worker_role=report.role if report else None,
        load=report.load if report else 0.0,
    )


def for_planner(signals: PoolSignals, views: Sequence[PodView]) -> PoolSignals:
    """The signals with every pod Kubernetes knows: pods with a step in flight count as
    draining (they hold their GPUs, serve nothing new); pods not scraped (starting,
    pending) are listed as not ready so the budget still counts them."""
    by_name = {w.name: w for w in signals.workers}
    out: list[WorkerSignal] = []
    for v in views:
        if v.deleting:
            continue
        w = by_name.get(v.name) or WorkerSignal(
            name=v.name,
            role=v.role if v.role in WORKER_ROLES else START_ROLE,
            ready=False,
            flexible=v.flexible,
        )
        w = replace(w, flexible=v.flexible)
        if v.busy_with_step or v.role == PENDING:
            w = replace(w, draining=True)
        out.append(w)
    return replace(signals, workers=tuple(out))


def reports(signals: PoolSignals) -> Mapping[str, WorkerReport]:
    return {w.name: WorkerReport(w.role, float(w.running + w.waiting)) for w in signals.workers}
