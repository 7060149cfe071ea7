"""Names, labels and owner references shared by every object a pool owns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tandem.api import v1alpha1 as api

Manifest = dict[str, Any]

POOL_LABEL = "tandem.dev/pool"
ROLE_LABEL = "tandem.dev/role"
ROLES = ("router", "prefill", "decode")
WORKER_PORT = 50051
ROUTER_PORT = 8000
METRICS_PORT = 9090  # workers: /metrics and /health over HTTP
MODEL_MOUNT = "/mnt/model"
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class PoolRef:
    """Identity of one InferencePool object."""

    name: str
    namespace: str
    uid: str
    generation: int


@dataclass(frozen=True)
class ModelVolume:
    volume: Manifest  # a pod `volumes[]` entry named "model"
    model_path: str  # where the model folder appears inside the container


def model_volume(uri: str) -> ModelVolume:
    """`pvc://claim[/path]` or `hostPath:///abs/path` -> the volume and the in-pod path."""
    if uri.startswith("pvc://"):
        claim, _, sub = uri[len("pvc://") :].partition("/")
        path = f"{MODEL_MOUNT}/{sub}".rstrip("/") if sub else MODEL_MOUNT
        pvc = {"claimName": claim, "readOnly": True}
        return ModelVolume({"name": "model", "persistentVolumeClaim": pvc}, path)
    if uri.startswith("hostPath:///"):
        host = "/" + uri[len("hostPath:///") :].rstrip("/")
        volume = {"name": "model", "hostPath": {"path": host, "type": "Directory"}}
        return ModelVolume(volume, MODEL_MOUNT)
    raise ValueError(f"spec.model.uri {uri!r}: expected pvc://<claim>[/path] or hostPath:///path")


def name_of(pool: PoolRef, role: str) -> str:
    return f"{pool.name}-{role}"


def labels(pool: PoolRef, role: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "tandem",
        "app.kubernetes.io/instance": pool.name,
        "app.kubernetes.io/component": role,
        "app.kubernetes.io/managed-by": "tandem-operator",
        POOL_LABEL: pool.name,
        ROLE_LABEL: role,
    }


def selector(pool: PoolRef, role: str) -> dict[str, str]:
    return {POOL_LABEL: pool.name, ROLE_LABEL: role}


def metadata(pool: PoolRef, role: str, name: str | None = None) -> Manifest:
    owner = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": pool.name,
        "uid": pool.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    return {
        "name": name or name_of(pool, role),
        "namespace": pool.namespace,
        "labels": labels(pool, role),
        "ownerReferences": [owner],
    }
