"""Kubernetes I/O of the operator: observe owned objects, server-side apply, delete, status.

Blocking calls (the official client is synchronous); handlers run them in a
thread. Every request carries a deadline. Errors come out as `KubeError`,
which says whether retrying later can help.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import DynamicApiError, NotFoundError

from tandem.api import v1alpha1 as api
from tandem.operator.objects import POOL_LABEL, Manifest, PoolRef
from tandem.operator.reconcile import ObjectKey

FIELD_MANAGER = "tandem-operator"
TIMEOUT = (5, 30)  # (connect, read) seconds

#: kind -> (API prefix, plural) of every kind a pool owns.
OWNED_KINDS: dict[str, tuple[str, str]] = {
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "Service": ("/api/v1", "services"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
}
POOL_PREFIX = f"/apis/{api.GROUP}/{api.VERSION}"


class KubeError(Exception):
    """An API call failed; `status` is the HTTP status, 0 when no answer came."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status, self.message = status, message

    @property
    def transient(self) -> bool:
        """Conflicts, throttling, server trouble and missing RBAC can heal; bad requests can't."""
        return self.status in (0, 403, 404, 408, 409, 429) or self.status >= 500

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.message}"


def api_client(kubeconfig: str | None = None) -> k8s.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig."""
    if kubeconfig is None:
        try:
            k8s_config.load_incluster_config()
            return k8s.ApiClient()
        except k8s_config.ConfigException:
            pass
    return k8s_config.new_client_from_config(config_file=kubeconfig)


def _path(prefix: str, plural: str, namespace: str, name: str | None = None) -> str:
    base = f"{prefix}/namespaces/{namespace}/{plural}"
    return f"{base}/{name}" if name else base


def _error(exc: Exception) -> KubeError:
    if isinstance(exc, DynamicApiError):
        status = int(getattr(exc, "status", 0) or 0)
        body = getattr(exc, "body", None) or ""
        try:
            message = json.loads(body).get("message", body)
        except (TypeError, ValueError):
            message = str(body) or str(exc)
        return KubeError(status, message)
    return KubeError(0, f"{type(exc).__name__}: {exc}")  # connection refused, timeouts


class Kube:
    def __init__(self, client: k8s.ApiClient) -> None:
        self._dyn = DynamicClient(client)

    def _request(self, method: str, path: str, **params: Any) -> Manifest:
        try:
            result = self._dyn.request(method, path, _request_timeout=TIMEOUT, **params)
        except NotFoundError:
            raise
        except Exception as exc:  # the client raises many types; classify them in one place
            raise _error(exc) from exc
        return result.to_dict() if hasattr(result, "to_dict") else {}

    def get_pool(self, namespace: str, name: str) -> Manifest | None:
        try:
            return self._request("get", _path(POOL_PREFIX, api.PLURAL, namespace, name))
        except NotFoundError:
            return None

    def owned(self, pool: PoolRef) -> dict[ObjectKey, Manifest]:
        """Objects labelled with the pool whose controller owner is this pool (by uid)."""
        found: dict[ObjectKey, Manifest] = {}
        for kind, (prefix, plural) in OWNED_KINDS.items():
            listing = self._request(
                "get",
                _path(prefix, plural, pool.namespace),
                label_selector=f"{POOL_LABEL}={pool.name}",
            )
            for item in listing.get("items") or ():
                owners = item["metadata"].get("ownerReferences") or ()
                if any(o.get("uid") == pool.uid and o.get("controller") for o in owners):
                    # List items carry neither; the manifests they are compared with do.
                    item.setdefault("kind", kind)
                    item.setdefault(
                        "apiVersion", prefix.removeprefix("/api/").removeprefix("/apis/")
                    )
                    found[(kind, item["metadata"]["name"])] = item
        return found

    def apply(self, manifest: Manifest) -> None:
        prefix, plural = OWNED_KINDS[manifest["kind"]]
        meta = manifest["metadata"]
        self._request(
            "patch",
            _path(prefix, plural, meta["namespace"], meta["name"]),
            body=manifest,
            content_type="application/apply-patch+yaml",
            field_manager=FIELD_MANAGER,
            force_conflicts=True,  # the operator owns these fields; hand edits are drift
        )

    def delete(self, namespace: str, keys: Iterable[ObjectKey]) -> None:
        for kind, name in keys:
            prefix, plural = OWNED_KINDS[kind]
            try:
                self._request(
                    "delete",
                    _path(prefix, plural, namespace, name),
                    propagation_policy="Background",
                )
            except NotFoundError:
                continue

    def patch_status(self, pool: PoolRef, status: dict[str, Any]) -> None:
        path = _path(POOL_PREFIX, api.PLURAL, pool.namespace, pool.name) + "/status"
        try:
            self._request(
                "patch",
                path,
                body={"status": status},
                content_type="application/merge-patch+json",
                field_manager=FIELD_MANAGER,
            )
        except NotFoundError:
            return  # the pool is being deleted; nothing to report on

    def pods(self, pool: PoolRef) -> list[Manifest]:
        """The pool's pods (routers and workers), by the pool label."""
        listing = self._request(
            "get",
            _path("/api/v1", "pods", pool.namespace),
            label_selector=f"{POOL_LABEL}={pool.name}",
        )
        return list(listing.get("items") or ())

    def patch_pod(
        self,
        namespace: str,
        name: str,
        labels: Mapping[str, str | None] | None = None,
        annotations: Mapping[str, str | None] | None = None,
    ) -> None:
        """Merge-patch a pod's labels and annotations (None removes a key)."""
        meta: dict[str, Any] = {}
        if labels:
            meta["labels"] = dict(labels)
        if annotations:
            meta["annotations"] = dict(annotations)
        self._request(
            "patch",
            _path("/api/v1", "pods", namespace, name),
            body={"metadata": meta},
            content_type="application/merge-patch+json",
        )

    def delete_pod(self, namespace: str, name: str) -> None:
        try:
            self._request("delete", _path("/api/v1", "pods", namespace, name))
        except NotFoundError:
            return
