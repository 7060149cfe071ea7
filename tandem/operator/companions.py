"""Services, PodDisruptionBudgets and the router's RBAC of a pool (pure)."""

from __future__ import annotations

from tandem.api import v1alpha1 as api
from tandem.operator.objects import (
    ROUTER_PORT,
    WORKER_PORT,
    Manifest,
    PoolRef,
    metadata,
    name_of,
    selector,
)


def router_service(pool: PoolRef) -> Manifest:
    port = {"name": "http", "port": ROUTER_PORT, "targetPort": "http", "protocol": "TCP"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(pool, "router"),
        "spec": {"type": "ClusterIP", "selector": selector(pool, "router"), "ports": [port]},
    }


def worker_service(pool: PoolRef, role: str) -> Manifest:
    """Headless, one per role: the EndpointSlice controller copies the Service's labels
    (pool and role) onto its slices, which is how the router finds workers by role."""
    port = {"name": "grpc", "port": WORKER_PORT, "targetPort": "grpc", "protocol": "TCP"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(pool, role),
        "spec": {
            "clusterIP": "None",
            "selector": selector(pool, role),
            "ports": [port],
            # Starting workers are listed (not ready) so the router sees them coming.
            "publishNotReadyAddresses": True,
        },
    }


def disruption_budget(pool: PoolRef, role: str, limit: Manifest | None = None) -> Manifest:
    """At most one pod of a role down for voluntary disruptions (node drains); `limit`
    replaces `maxUnavailable: 1` (an autoscaled pool's `minAvailable`)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(pool, role),
        "spec": {
            **(limit or {"maxUnavailable": 1}),
            "selector": {"matchLabels": selector(pool, role)},
        },
    }


def router_rbac(pool: PoolRef) -> tuple[Manifest, Manifest, Manifest]:
    """ServiceAccount + Role + RoleBinding: routers watch their pool's EndpointSlices and
    read their own InferencePool (traffic classes, disaggregation threshold)."""
    name = name_of(pool, "router")
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(pool, "router")}
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata(pool, "router"),
        "rules": [
            {
                "apiGroups": ["discovery.k8s.io"],
                "resources": ["endpointslices"],
                "verbs": ["get", "list", "watch"],
            },
            {
                "apiGroups": [api.GROUP],
                "resources": [api.PLURAL],
                "resourceNames": [pool.name],
                "verbs": ["get", "watch"],
            },
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": metadata(pool, "router"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": pool.namespace}],
    }
    return account, role, binding
