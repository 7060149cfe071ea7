"""The pool's status: replica counts per role and the Ready/Progressing/Degraded conditions.

Pure. Counts come from the owned Deployments' own status; conditions follow
the usual Kubernetes shape (type, status, reason, message, lastTransitionTime,
observedGeneration) so `kubectl wait --for=condition=Ready` works.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tandem.operator.objects import Manifest

ROLES = ("prefill", "decode", "router")


def _role_state(desired: int, deployment: Manifest | None) -> dict[str, Any]:
    status = (deployment or {}).get("status") or {}
    meta = (deployment or {}).get("metadata") or {}
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    current = int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 1)
    failure = _failure(status.get("conditions") or [])
    return {
        "desired": desired,
        "ready": ready,
        "settled": deployment is not None and current and ready >= desired and updated >= desired,
        "failure": failure,
    }


def _failure(conditions: list[Mapping[str, Any]]) -> str | None:
    for c in conditions:
        if c.get("type") == "ReplicaFailure" and c.get("status") == "True":
            return f"{c.get('reason', 'ReplicaFailure')}: {c.get('message', '')}".strip()
        if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
            return f"ProgressDeadlineExceeded: {c.get('message', '')}".strip()
    return None


def condition(kind: str, ok: bool, reason: str, message: str, generation: int) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def pool_status(
    generation: int,
    desired: Mapping[str, int],
    objects: Mapping[tuple[str, str], Manifest],
    changing: bool,
) -> dict[str, Any]:
    """Status from the owned Deployments; `changing` says this pass applies or deletes."""
    deployments = {
        name.rsplit("-", 1)[-1]: obj
        for (kind, name), obj in objects.items()
        if kind == "Deployment"
    }
    states = {role: _role_state(desired[role], deployments.get(role)) for role in ROLES}
    counts = ", ".join(f"{r} {s['ready']}/{s['desired']}" for r, s in states.items())
    failures = [f"{r}: {s['failure']}" for r, s in states.items() if s["failure"]]
    settled = all(s["settled"] for s in states.values())
    waiting = [r for r, s in states.items() if not s["settled"]]
    detail = f"waiting for {', '.join(waiting)}; ready: {counts}"
    why = "Reconciling" if changing else "ReplicasNotReady"
    # Ready follows the pods: correcting drift on a serving pool does not make it unready.
    if settled:
        ready = condition("Ready", True, "AllReplicasReady", f"ready: {counts}", generation)
    else:
        ready = condition("Ready", False, why, detail, generation)
    if settled and not changing:
        progressing = condition("Progressing", False, "Stable", "nothing to roll out", generation)
    else:
        text = detail if not settled else "applying changes to owned objects"
        progressing = condition("Progressing", True, why, text, generation)
    degraded = condition(
        "Degraded",
        bool(failures),
        "DeploymentFailing" if failures else "AsExpected",
        "; ".join(failures) or "no failures reported",
        generation,
    )
    out: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": [ready, progressing, degraded],
    }
    for role, s in states.items():
        out[role] = {
            "replicas": s["desired"],
            "readyReplicas": s["ready"],
            "ready": f"{s['ready']}/{s['desired']}",
        }
    return out


def invalid_spec_status(generation: int, message: str) -> dict[str, Any]:
    """Status of a pool whose spec cannot be served; the message names the field."""
    return {
        "observedGeneration": generation,
        "conditions": [
            condition("Ready", False, "InvalidSpec", message, generation),
            condition("Progressing", False, "InvalidSpec", message, generation),
            condition("Degraded", True, "InvalidSpec", message, generation),
        ],
    }


def with_transition_times(
    status: Mapping[str, Any], previous: Mapping[str, Any], now: str
) -> dict[str, Any]:
    """Keep a condition's lastTransitionTime unless its status flipped; `now` otherwise."""
    before = {c.get("type"): c for c in previous.get("conditions") or ()}
    conditions = []
    for c in status.get("conditions") or ():
        old = before.get(c["type"])
        same = old is not None and old.get("status") == c["status"]
        stamp = old.get("lastTransitionTime") if same and old else None
        conditions.append({**c, "lastTransitionTime": stamp or now})
    return {**status, "conditions": conditions}
