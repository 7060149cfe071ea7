"""Everything an InferencePool owns, as manifests (pure: spec in, dicts out).

Per pool `p`: Deployments `p-router`, `p-prefill`, `p-decode`; Services `p-router`
(ClusterIP, HTTP) and headless `p-prefill`/`p-decode`; PodDisruptionBudgets for
roles with two or more pods (a budget over one pod either blocks node drains
forever or protects nothing); the router's ServiceAccount, Role and
RoleBinding. Each carries the pool's owner reference, so deleting the pool
lets the garbage collector remove all of it. An autoscaled pool's workers follow
`tandem.operator.layout` instead: fixed `p-prefill`/`p-decode` at the minimums,
`p-flexible` for the rest, budgets counted by role label.
"""

from __future__ import annotations

import hashlib
import json

from tandem.api import v1alpha1 as api
from tandem.operator.companions import (
    disruption_budget,
    router_rbac,
    router_service,
    worker_service,
)
from tandem.operator.layout import WORKER_ROLES, Scale, budget, scale_of
from tandem.operator.objects import Manifest, PoolRef
from tandem.operator.scaling_policy import autoscaled
from tandem.operator.workload import flexible_deployment, router_deployment, worker_deployment

#: A digest of everything a manifest sets. `reconcile` compares manifests with the live
#: objects as subsets (the API server adds defaults), so a field the spec no longer sets
#: would never look changed; the digest does change then, the object is applied again,
#: and server-side apply removes the field the operator stopped setting.
MANIFEST_HASH = "tandem.dev/manifest-hash"


def replicas_of(spec: api.InferencePoolSpec) -> dict[str, int]:
    return {
        "router": spec.router.replicas,
        "prefill": spec.prefill.replicas,
        "decode": spec.decode.replicas,
    }


def render(
    pool: PoolRef,
    spec: api.InferencePoolSpec,
    default_image: str,
    scale: Scale | None = None,
) -> tuple[Manifest, ...]:
    """All owned objects, in an order that lets pods start cleanly (RBAC, Services first).
    An autoscaled pool gets the layout of `tandem.operator.layout`, sized by `scale`
    (from its status and pods; the spec's replicas before the first decision)."""
    objects: list[Manifest] = [*router_rbac(pool), router_service(pool)]
    objects += [worker_service(pool, role) for role in ("prefill", "decode")]
    if autoscaled(spec):
        objects += _autoscaled_workers(pool, spec, default_image, scale or scale_of(spec, {}, ()))
        return tuple(_stamped(m) for m in objects)
    objects += [
        worker_deployment(pool, spec, "prefill", default_image),
        worker_deployment(pool, spec, "decode", default_image),
        router_deployment(pool, spec, default_image),
    ]
    objects += [
        disruption_budget(pool, role) for role, count in replicas_of(spec).items() if count >= 2
    ]
    return tuple(_stamped(m) for m in objects)


def _autoscaled_workers(
    pool: PoolRef, spec: api.InferencePoolSpec, image: str, scale: Scale
) -> list[Manifest]:
    out = [
        worker_deployment(pool, spec, "prefill", image, scale.fixed.prefill),
        worker_deployment(pool, spec, "decode", image, scale.fixed.decode),
        flexible_deployment(pool, spec, image, scale.flexible),
    ]
    for role in WORKER_ROLES:
        limit = budget(role, scale.desired)
        if limit is not None:
            out.append(disruption_budget(pool, role, limit))
    out.append(router_deployment(pool, spec, image))
    if spec.router.replicas >= 2:
        out.append(disruption_budget(pool, "router"))
    return out


def _stamped(manifest: Manifest) -> Manifest:
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
    manifest["metadata"]["annotations"] = {MANIFEST_HASH: digest}
    return manifest
