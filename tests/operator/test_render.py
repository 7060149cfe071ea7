"""render: names, labels, owner references and pod shape of everything a pool owns."""

from __future__ import annotations

from typing import Any

import pytest

from tandem.api.v1alpha1 import InferencePoolSpec
from tandem.operator.objects import PoolRef, model_volume
from tandem.operator.render import render

POOL = PoolRef(name="llama", namespace="serving", uid="uid-1", generation=3)


def spec(**overrides: Any) -> InferencePoolSpec:
    base: dict[str, Any] = {"model": {"name": "m", "uri": "pvc://models/llama"}}
    return InferencePoolSpec.model_validate({**base, **overrides})


def by_key(objects: tuple[dict[str, Any], ...]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def test_minimal_pool_objects() -> None:
    keys = set(by_key(render(POOL, spec(), "img:1")))
    assert keys == {
        ("ServiceAccount", "llama-router"),
        ("Role", "llama-router"),
        ("RoleBinding", "llama-router"),
        ("Service", "llama-router"),
        ("Service", "llama-prefill"),
        ("Service", "llama-decode"),
        ("Deployment", "llama-router"),
        ("Deployment", "llama-prefill"),
        ("Deployment", "llama-decode"),
    }


def test_every_object_is_owned_and_labelled() -> None:
    for obj in render(POOL, spec(decode={"replicas": 2}), "img:1"):
        meta = obj["metadata"]
        role = meta["name"].rsplit("-", 1)[-1]
        assert meta["namespace"] == "serving"
        assert meta["labels"]["tandem.dev/pool"] == "llama"
        assert meta["labels"]["tandem.dev/role"] == role
        (owner,) = meta["ownerReferences"]
        assert owner == {
            "apiVersion": "tandem.dev/v1alpha1",
            "kind": "InferencePool",
            "name": "llama",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }


@pytest.mark.parametrize(
    ("replicas", "budgets"),
    [
        ({}, set()),
        ({"decode": {"replicas": 2}}, {"llama-decode"}),
        (
            {"router": {"replicas": 3}, "prefill": {"replicas": 2}, "decode": {"replicas": 4}},
            {"llama-router", "llama-prefill", "llama-decode"},
        ),
    ],
)
def test_disruption_budgets_only_for_two_or_more(
    replicas: dict[str, Any], budgets: set[str]
) -> None:
    objects = by_key(render(POOL, spec(**replicas), "img:1"))
    assert {name for kind, name in objects if kind == "PodDisruptionBudget"} == budgets
    for name in budgets:
        pdb = objects[("PodDisruptionBudget", name)]
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["selector"]["matchLabels"]["tandem.dev/role"] == name.split("-")[1]


@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_worker_pod(role: str) -> None:
    s = spec(**{role: {"replicas": 3, "gpusPerReplica": 2, "nodeSelector": {"gpu": "h100"}}})
    deploy = by_key(render(POOL, s, "img:1"))[("Deployment", f"llama-{role}")]
    assert deploy["spec"]["replicas"] == 3
    assert deploy["spec"]["selector"]["matchLabels"] == {
        "tandem.dev/pool": "llama",
        "tandem.dev/role": role,
    }
    pod = deploy["spec"]["template"]
    assert pod["metadata"]["labels"]["tandem.dev/role"] == role
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["tandem"]
    assert container["args"] == [
        "worker", "--role", role, "--model", "/mnt/model/llama", "--host", "0.0.0.0",
        "--port", "50051", "--metrics-port", "9090", "--dtype", "bfloat16",
    ]  # fmt: skip
    assert container["image"] == "img:1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["ports"][0]["containerPort"] == 50051
    assert pod["spec"]["nodeSelector"] == {"gpu": "h100"}
    assert pod["spec"]["volumes"] == [
        {"name": "model", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}}
    ]
    env = {e["name"]: e for e in container["env"]}
    assert env["TANDEM_POOL"]["value"] == "llama"
    assert env["TANDEM_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_cpu_workers_request_no_gpu_and_keep_cpu_memory() -> None:
    s = spec(
        image="mine:2",
        imagePullPolicy="Never",
        decode={"gpusPerReplica": 0, "resources": {"requests": {"cpu": "2", "memory": "4Gi"}}},
    )
    deploy = by_key(render(POOL, s, "img:1"))[("Deployment", "llama-decode")]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"}}
    assert (container["image"], container["imagePullPolicy"]) == ("mine:2", "Never")


def test_router() -> None:
    objects = by_key(render(POOL, spec(router={"replicas": 2}), "img:1"))
    deploy = objects[("Deployment", "llama-router")]
    pod = deploy["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "llama-router"
    assert pod["containers"][0]["args"] == [
        "router", "--discovery", "kube", "--pool", "llama", "--namespace", "serving",
        "--port", "8000", "--model", "/mnt/model/llama", "--served-model-name", "m",
        "--min-prompt-tokens", "256",
    ]  # fmt: skip
    assert "resources" not in pod["containers"][0]  # no GPU for the router
    service = objects[("Service", "llama-router")]
    assert service["spec"]["ports"][0]["port"] == 8000
    assert service["spec"]["selector"]["tandem.dev/role"] == "router"
    rules = objects[("Role", "llama-router")]["rules"]
    assert {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"]} in rules  # fmt: skip
    binding = objects[("RoleBinding", "llama-router")]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "llama-router", "namespace": "serving"}
    ]


@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_worker_services_are_headless_per_role(role: str) -> None:
    service = by_key(render(POOL, spec(), "img:1"))[("Service", f"llama-{role}")]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"tandem.dev/pool": "llama", "tandem.dev/role": role}
    # The EndpointSlice controller copies these labels onto the slices the router selects.
    assert service["metadata"]["labels"]["tandem.dev/role"] == role
    assert service["spec"]["ports"][0]["name"] == "grpc"


@pytest.mark.parametrize(
    ("uri", "volume", "path"),
    [
        ("pvc://models", {"persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
         "/mnt/model"),
        ("pvc://models/a/b", {"persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
         "/mnt/model/a/b"),
        ("hostPath:///data/llama/", {"hostPath": {"path": "/data/llama", "type": "Directory"}},
         "/mnt/model"),
    ],
)  # fmt: skip
def test_model_volume(uri: str, volume: dict[str, Any], path: str) -> None:
    got = model_volume(uri)
    assert got.volume == {"name": "model", **volume}
    assert got.model_path == path


def test_model_volume_rejects_other_schemes() -> None:
    with pytest.raises(ValueError, match=r"spec\.model\.uri"):
        model_volume("s3://bucket/model")


def _args(objects: dict[tuple[str, str], dict[str, Any]], name: str) -> list[str]:
    args: list[str] = objects[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0][
        "args"
    ]
    return args


@pytest.mark.parametrize(
    ("transport", "flags"),
    [
        ("auto", []),
        ("grpc", ["--kv-transports", "grpc"]),
        ("shm", ["--kv-transports", "shm,grpc"]),
        ("cuda-ipc", ["--kv-transports", "cuda_ipc,grpc"]),
    ],
)
def test_kv_transport_flags(transport: str, flags: list[str]) -> None:
    objects = by_key(render(POOL, spec(kvTransfer={"transport": transport}), "img:1"))
    args = _args(objects, "llama-decode")
    tail = args[args.index("--dtype") + 2 :]
    assert tail == flags


@pytest.mark.parametrize("transport", ["auto", "grpc", "shm", "cuda-ipc"])
def test_rendered_worker_args_are_accepted_by_tandem_worker(transport: str, tmp_path: Any) -> None:
    """The operator's command line must parse in the worker it starts (every API choice)."""
    from tandem.cli import build_parser
    from tandem.worker.command import config_from_args

    (tmp_path / "config.json").write_text("{}")
    objects = by_key(render(POOL, spec(kvTransfer={"transport": transport}), "img:1"))
    args = _args(objects, "llama-prefill")
    args[args.index("--model") + 1] = str(tmp_path)
    parsed = build_parser().parse_args(args)
    config = config_from_args(parsed)
    assert config.role == "prefill"
    assert config.kv_transports[-1] == "grpc"


def test_traffic_reaches_the_router() -> None:
    s = spec(
        disaggregation={"minPromptTokens": 512},
        traffic={"priorityClasses": [
            {"name": "chat", "priority": 100, "ttftSLO": "1m30s"},
            {"name": "batch", "priority": 1},
        ]},
    )  # fmt: skip
    args = _args(by_key(render(POOL, s, "img:1")), "llama-router")
    assert args[args.index("--min-prompt-tokens") + 1] == "512"
    assert args[args.index("--priority-classes") + 1] == "chat:100:90s,batch:1"
