"""The pool's status: replica counts per role and the Ready/Progressing/Degraded conditions.

Pure. Counts come from the owned Deployments' own status; conditions follow
the usual Kubernetes shape (type, status, reason, message, lastTransitionTime,
observedGeneration) so `kubectl wait --for=condition=Ready` works.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tandem.operator.objects import ROLE_LABEL, Manifest

ROLES = ("prefill", "decode", "router")
SIGNALS_DOWN = "SignalsUnavailable"  # Degraded reason owned by the scaling loop


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


def _pod_ready(pod: Manifest) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _pod_role_state(
    desired: int, role: str, pods: Sequence[Manifest], deployments: list[Manifest | None]
) -> dict[str, Any]:
    """A worker role of an autoscaled pool: its pods belong to two Deployments (fixed and
    flexible), so the counts come from the pods' role labels."""
    ready = sum(
        1
        for p in pods
        if (p["metadata"].get("labels") or {}).get(ROLE_LABEL) == role
        and not p["metadata"].get("deletionTimestamp")
        and _pod_ready(p)
    )
    states = [_role_state(0, d) for d in deployments]
    current = all(s["settled"] for s in states)  # desired 0: present and observed
    failure = next((s["failure"] for s in states if s["failure"]), None)
    return {"desired": desired, "ready": ready, "settled": current and ready >= desired,
            "failure": failure}  # fmt: skip


def pool_status(
    generation: int,
    desired: Mapping[str, int],
    objects: Mapping[tuple[str, str], Manifest],
    changing: bool,
    pods: Sequence[Manifest] | None = None,
) -> dict[str, Any]:
    """Status from the owned Deployments; `changing` says this pass applies or deletes.
    With `pods` (an autoscaled pool), worker counts follow the pods' role labels."""
    deployments = {
        name.rsplit("-", 1)[-1]: obj
        for (kind, name), obj in objects.items()
        if kind == "Deployment"
    }
    states = {role: _role_state(desired[role], deployments.get(role)) for role in ROLES}
    if pods is not None:
        for role in ("prefill", "decode"):
            owners = [deployments.get(role), deployments.get("flexible")]
            states[role] = _pod_role_state(desired[role], role, pods, owners)
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


def keep_scaling_conditions(
    status: Mapping[str, Any], previous: Mapping[str, Any]
) -> dict[str, Any]:
    """For the reconcile pass of an autoscaled pool: carry the scaling loop's conditions
    (ScalingLimited; Degraded while signals are down and no Deployment fails) over."""
    before = {c.get("type"): c for c in previous.get("conditions") or ()}
    out = []
    for c in status.get("conditions") or ():
        old = before.get(c["type"])
        signals_down = old is not None and old.get("reason") == SIGNALS_DOWN
        if c["type"] == "Degraded" and c["status"] == "False" and signals_down:
            out.append(dict(old))  # type: ignore[arg-type]
        else:
            out.append(dict(c))
    if "ScalingLimited" in before:
        out.append(dict(before["ScalingLimited"]))
    return {**status, "conditions": out}
