"""The object layout of an autoscaled pool, and its sizes (pure).

An autoscaled pool runs its minimums as fixed-role Deployments (`p-prefill`,
`p-decode`, `minReplicas` each, selectors on the role label as for any pool)
and everything above them as one Deployment of *flexible* workers,
`p-flexible`, whose selector is `{pool, tandem.dev/flexible: "true"}`: it does
not include the role label, so the operator can relabel a flexible pod's
`tandem.dev/role` (which the per-role Services, hence the EndpointSlices the
routers read, follow) without its ReplicaSet orphaning or replacing it. A new
flexible pod starts with the role label `pending` (in no Service, so no
traffic) and its worker in the decode role; the operator gives it its first
role the same way it flips one (see `tandem.operator.flips`).

Sizes come from the planner's last decision, which the operator keeps in
`status.lastScaling` (so reconcile stays level-triggered and a restart resumes
it): fixed = minReplicas per role, flexible = the rest, plus one replica for
each pod still draining before its removal, and never fewer than the flexible
pods not yet drained: the count drops only when a drained pod is marked for
deletion, so lowering it never deletes a pod that has streams in flight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tandem.api import v1alpha1 as api
from tandem.operator.objects import POOL_LABEL, ROLE_LABEL, Manifest

FLEX_LABEL = "tandem.dev/flexible"
PENDING = "pending"  # the role label of a flexible pod that has no role yet
START_ROLE = "decode"  # the worker role a new flexible pod starts in
FLIP_TO = "tandem.dev/flip-to"  # a flip (or first assignment) in progress: the role it goes to
SCALE_DOWN = "tandem.dev/scale-down"  # drain: draining before removal; drained: may be deleted
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
LOWEST_COST = "-2147483648"  # the ReplicaSet deletes this pod first when replicas drop
WORKER_ROLES = ("prefill", "decode")


@dataclass(frozen=True)
class Counts:
    prefill: int
    decode: int

    def of(self, role: str) -> int:
        return self.prefill if role == "prefill" else self.decode


@dataclass(frozen=True)
class Scale:
    """Replica counts of an autoscaled pool's worker Deployments."""

    desired: Counts  # workers per role the pool should serve with
    fixed: Counts  # replicas of p-prefill and p-decode
    flexible: int  # replicas of p-flexible


def _role_spec(spec: api.InferencePoolSpec, role: str) -> api.RoleSpec:
    return spec.prefill if role == "prefill" else spec.decode


def desired_counts(spec: api.InferencePoolSpec, status: Mapping[str, Any]) -> Counts:
    """The last decision's counts (clamped to the spec's current bounds), or the spec's
    replicas before the first decision."""
    last = status.get("lastScaling") or {}
    out = {}
    for role in WORKER_ROLES:
        r = _role_spec(spec, role)
        n = last.get(role)
        n = r.replicas if not isinstance(n, int) else n
        hi = r.max_replicas if r.max_replicas is not None else n
        out[role] = max(r.min_replicas, min(n, hi))
    return Counts(out["prefill"], out["decode"])


def is_flexible(pod: Manifest) -> bool:
    return (pod.get("metadata", {}).get("labels") or {}).get(FLEX_LABEL) == "true"


def _annotation(pod: Manifest, key: str) -> str | None:
    value = (pod.get("metadata", {}).get("annotations") or {}).get(key)
    return None if value is None else str(value)


def _staying(pods: Sequence[Manifest]) -> list[Manifest]:
    """Flexible pods not yet drained for removal (nor going away)."""
    return [
        p
        for p in pods
        if is_flexible(p)
        and _annotation(p, SCALE_DOWN) != "drained"
        and not p.get("metadata", {}).get("deletionTimestamp")
    ]


def scale_of(
    spec: api.InferencePoolSpec, status: Mapping[str, Any], pods: Sequence[Manifest]
) -> Scale:
    """The Deployments' sizes. The flexible count never drops below the flexible pods not
    yet drained: whatever lowered the desired counts (a decision, a smaller maxReplicas),
    a pod leaves only after its drain, by being marked `drained`."""
    desired = desired_counts(spec, status)
    fixed = Counts(spec.prefill.min_replicas, spec.decode.min_replicas)
    staying = _staying(pods)
    draining = sum(1 for p in staying if _annotation(p, SCALE_DOWN) == "drain")
    wanted = desired.prefill - fixed.prefill + desired.decode - fixed.decode
    return Scale(desired, fixed, max(wanted + draining, len(staying)))


def flexible_selector(pool_name: str) -> dict[str, str]:
    return {POOL_LABEL: pool_name, FLEX_LABEL: "true"}


def flexible_pod_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """A flexible pod's template labels: the pool's, role `pending`, the flexible mark."""
    return {
        **labels,
        "app.kubernetes.io/component": "flexible",
        ROLE_LABEL: PENDING,
        FLEX_LABEL: "true",
    }


def budget(role: str, desired: Counts) -> Manifest | None:
    """A role's PodDisruptionBudget spec: pods of one role belong to two Deployments (fixed
    and flexible), and `maxUnavailable` would count the flexible one's whole scale, so the
    budget is an integer `minAvailable` over the pods that carry the role label."""
    n = desired.of(role)
    return {"minAvailable": n - 1} if n >= 2 else None
