"""The router and worker Deployments of a pool (pure: spec in, dicts out)."""

from __future__ import annotations

from tandem.api import v1alpha1 as api
from tandem.env import TANDEM_POD_NAME, TANDEM_POD_NAMESPACE, TANDEM_POOL
from tandem.operator.layout import START_ROLE, flexible_pod_labels, flexible_selector
from tandem.operator.objects import (
    GPU_RESOURCE,
    METRICS_PORT,
    MODEL_MOUNT,
    ROUTER_PORT,
    WORKER_PORT,
    Manifest,
    ModelVolume,
    PoolRef,
    labels,
    metadata,
    model_volume,
    name_of,
    selector,
)


def _resources(placement: api.Placement, gpus: int) -> Manifest:
    out: Manifest = {}
    if placement.resources is not None:
        for kind in ("requests", "limits"):
            amounts = getattr(placement.resources, kind)
            if amounts is not None:
                out[kind] = amounts.model_dump(exclude_none=True)
    if gpus:
        # Extended resources are requested through limits; requests default to them.
        out.setdefault("limits", {})[GPU_RESOURCE] = str(gpus)
    return out


def _env(pool: PoolRef) -> list[Manifest]:
    def field(path: str) -> Manifest:
        return {"fieldRef": {"fieldPath": path}}

    return [
        {"name": TANDEM_POD_NAME, "valueFrom": field("metadata.name")},
        {"name": TANDEM_POD_NAMESPACE, "valueFrom": field("metadata.namespace")},
        {"name": TANDEM_POOL, "value": pool.name},
    ]


def _container(
    spec: api.InferencePoolSpec,
    image: str,
    name: str,
    args: list[str],
    ports: list[Manifest],
    health_port: str,
) -> Manifest:
    container: Manifest = {
        "name": name,
        "image": spec.image or image,
        "command": ["tandem"],
        "args": args,
        "ports": ports,
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": health_port},
            "periodSeconds": 5,
        },
        "volumeMounts": [{"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True}],
    }
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    return container


def _port(name: str, number: int) -> Manifest:
    return {"name": name, "containerPort": number, "protocol": "TCP"}


def _pod(
    pool: PoolRef,
    role: str,
    placement: api.Placement,
    container: Manifest,
    volume: ModelVolume,
    extra: Manifest,
) -> Manifest:
    pod: Manifest = {
        "enableServiceLinks": False,  # a pool's many Services must not flood the env
        "containers": [container],
        "volumes": [volume.volume],
        **extra,
    }
    if placement.node_selector:
        pod["nodeSelector"] = dict(placement.node_selector)
    if placement.tolerations:
        pod["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in placement.tolerations
        ]
    return {"metadata": {"labels": labels(pool, role)}, "spec": pod}


def _transports(choice: str) -> list[str]:
    """`auto` keeps the worker's own preference list; a named transport goes first, with
    gRPC kept as the fallback every pair of pods shares."""
    if choice == "auto":
        return []
    name = choice.replace("-", "_")  # the API spells it cuda-ipc, the worker flag cuda_ipc
    return ["--kv-transports", "grpc" if name == "grpc" else f"{name},grpc"]


def worker_args(spec: api.InferencePoolSpec, role: str, model_path: str) -> list[str]:
    return [
        "worker",
        "--role", role,
        "--model", model_path,
        "--host", "0.0.0.0",  # the pod IP, not loopback: routers and peers connect to it
        "--port", str(WORKER_PORT),
        "--metrics-port", str(METRICS_PORT),
        "--dtype", spec.model.dtype,
        *(["--max-model-len", str(spec.model.max_model_len)] if spec.model.max_model_len else []),
        *_transports(spec.kv_transfer.transport),
    ]  # fmt: skip


def _classes(traffic: api.Traffic | None) -> list[str]:
    if traffic is None or not traffic.priority_classes:
        return []
    items = []
    for c in traffic.priority_classes:
        slo = f":{api.parse_duration(c.ttft_slo):g}s" if c.ttft_slo else ""
        items.append(f"{c.name}:{c.priority}{slo}")
    return ["--priority-classes", ",".join(items)]


def router_args(pool: PoolRef, spec: api.InferencePoolSpec, model_path: str) -> list[str]:
    return [
        "router",
        "--discovery", "kube",
        "--pool", pool.name,
        "--namespace", pool.namespace,
        "--port", str(ROUTER_PORT),
        "--model", model_path,  # the router tokenizes and applies the chat template
        "--served-model-name", spec.model.name,
        "--min-prompt-tokens", str(spec.disaggregation.min_prompt_tokens),
        *_classes(spec.traffic),
    ]  # fmt: skip


def worker_deployment(
    pool: PoolRef,
    spec: api.InferencePoolSpec,
    role: str,
    image: str,
    replicas: int | None = None,
) -> Manifest:
    """One role's Deployment; `replicas` overrides the spec's (an autoscaled pool's sizes)."""
    role_spec: api.RoleSpec = spec.prefill if role == "prefill" else spec.decode
    pod = _worker_pod(pool, spec, role, role_spec, image)
    count = role_spec.replicas if replicas is None else replicas
    return _deployment(pool, role, count, pod, max_surge=0)


def flexible_deployment(
    pool: PoolRef, spec: api.InferencePoolSpec, image: str, replicas: int
) -> Manifest:
    """The flexible workers of an autoscaled pool (see tandem.operator.layout): the
    decode role's pod shape (flexible pods move between roles, so both roles' placement
    must fit them; the decode spec is the one used), role label `pending` until the
    operator assigns one, and a selector without the role label."""
    pod = _worker_pod(pool, spec, START_ROLE, spec.decode, image)
    pod["metadata"]["labels"] = flexible_pod_labels(pod["metadata"]["labels"])
    deploy = _deployment(pool, "flexible", replicas, pod, max_surge=0)
    deploy["spec"]["selector"] = {"matchLabels": flexible_selector(pool.name)}
    return deploy


def _worker_pod(
    pool: PoolRef, spec: api.InferencePoolSpec, role: str, role_spec: api.RoleSpec, image: str
) -> Manifest:
    volume = model_volume(spec.model.uri)
    container = _container(
        spec,
        image,
        "worker",
        worker_args(spec, role, volume.model_path),
        [_port("grpc", WORKER_PORT), _port("metrics", METRICS_PORT)],
        "metrics",
    )
    container["env"] = _env(pool)
    resources = _resources(role_spec, role_spec.gpus_per_replica)
    if resources:
        container["resources"] = resources
    # Draining in-flight requests takes up to a long completion; give it time.
    return _pod(pool, role, role_spec, container, volume, {"terminationGracePeriodSeconds": 120})


def router_deployment(pool: PoolRef, spec: api.InferencePoolSpec, image: str) -> Manifest:
    volume = model_volume(spec.model.uri)  # the router reads tokenizer.json from it
    container = _container(
        spec,
        image,
        "router",
        router_args(pool, spec, volume.model_path),
        [_port("http", ROUTER_PORT)],
        "http",
    )
    container["env"] = _env(pool)
    resources = _resources(spec.router, 0)
    if resources:
        container["resources"] = resources
    extra = {"serviceAccountName": name_of(pool, "router")}
    pod = _pod(pool, "router", spec.router, container, volume, extra)
    return _deployment(pool, "router", spec.router.replicas, pod, max_surge=1)


def _deployment(pool: PoolRef, role: str, replicas: int, pod: Manifest, max_surge: int) -> Manifest:
    # Workers hold GPUs from a fixed budget, so they roll one pod at a time without surge.
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(pool, role),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector(pool, role)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": max_surge, "maxUnavailable": 1},
            },
            "template": pod,
        },
    }
