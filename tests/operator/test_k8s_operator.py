"""The operator against the local control plane: one operator process for the module,
running as the non-admin identity bound to the chart's ClusterRole.

Tests run in file order and share one pool ("tiny", from examples/): create -> Ready,
scale, drift, restart, delete.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.devcluster_plugin import DevCluster
from tests.operator.kube_harness import (
    REPO,
    OperatorProcess,
    condition,
    get_json,
    wait_for,
)

pytestmark = pytest.mark.k8s

CRD = REPO / "crds" / "inferencepools.tandem.dev.yaml"
CHART = REPO / "charts" / "tandem"
MINIMAL = REPO / "examples" / "inferencepool-minimal.yaml"
KINDS = "deployments,services,serviceaccounts,roles,rolebindings,poddisruptionbudgets"
READY_WITHIN = 60.0


@pytest.fixture(scope="module")
def namespace(dev_cluster: DevCluster) -> Iterator[str]:
    """One namespace for the module, with a bound PVC "models" as the examples expect."""
    ns = f"op-{uuid.uuid4().hex[:8]}"
    dev_cluster.kubectl("create", "namespace", ns)
    volume = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"models-{ns}"},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadOnlyMany"],
            "storageClassName": "",
            "persistentVolumeReclaimPolicy": "Delete",
            "hostPath": {"path": "/tmp/tandem-models"},
            "claimRef": {"namespace": ns, "name": "models"},
        },
    }
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "models", "namespace": ns},
        "spec": {
            "accessModes": ["ReadOnlyMany"],
            "storageClassName": "",
            "volumeName": f"models-{ns}",
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    dev_cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                              "items": [volume, claim]}))  # fmt: skip
    yield ns
    dev_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    dev_cluster.kubectl("delete", "pv", f"models-{ns}", "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(
    dev_cluster: DevCluster,
    crd: None,
    namespace: str,
    operator_identity: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    process = OperatorProcess(dev_cluster, operator_identity, namespace, log)
    process.start()
    yield process
    process.stop()


def _pool(cluster: DevCluster, ns: str, name: str = "tiny") -> dict[str, Any] | None:
    pool: dict[str, Any] | None = get_json(cluster, "inferencepools.tandem.dev", name, "-n", ns)
    return pool


def _owned(cluster: DevCluster, ns: str, pool: str = "tiny") -> list[dict[str, Any]]:
    listing = get_json(cluster, KINDS, "-n", ns, "-l", f"tandem.dev/pool={pool}")
    return list((listing or {}).get("items") or [])


def _ready_with(counts: dict[str, str]) -> Any:
    def check(pool: dict[str, Any] | None) -> bool:
        status = (pool or {}).get("status") or {}
        if condition(pool, "Ready").get("status") != "True":
            return False
        if status.get("observedGeneration") != pool["metadata"]["generation"]:  # type: ignore[index]
            return False
        return all((status.get(role) or {}).get("ready") == want for role, want in counts.items())

    return check


def test_minimal_pool_becomes_ready(
    dev_cluster: DevCluster, namespace: str, operator: OperatorProcess
) -> None:
    started = time.monotonic()
    dev_cluster.kubectl("apply", "-n", namespace, "-f", str(MINIMAL))
    ready = _ready_with({"prefill": "1/1", "decode": "1/1", "router": "1/1"})
    pool = wait_for(
        lambda: (p := _pool(dev_cluster, namespace)) and ready(p) and p,
        READY_WITHIN,
        "pool tiny to be Ready with 1/1 per role",
        operator.tail,
    )
    print(f"pool Ready after {time.monotonic() - started:.1f}s")
    uid = pool["metadata"]["uid"]

    owned = {(o["kind"], o["metadata"]["name"]): o for o in _owned(dev_cluster, namespace)}
    for kind, name in (
        [("Deployment", f"tiny-{r}") for r in ("router", "prefill", "decode")]
        + [("Service", f"tiny-{r}") for r in ("router", "prefill", "decode")]
        + [
            ("ServiceAccount", "tiny-router"),
            ("Role", "tiny-router"),
            ("RoleBinding", "tiny-router"),
        ]
    ):
        obj = owned[(kind, name)]
        (ref,) = obj["metadata"]["ownerReferences"]
        assert (ref["uid"], ref["kind"], ref["controller"]) == (uid, "InferencePool", True)
        assert obj["metadata"]["labels"]["tandem.dev/role"] == name.split("-", 1)[1]
    assert owned[("Service", "tiny-decode")]["spec"]["clusterIP"] == "None"
    worker = owned[("Deployment", "tiny-decode")]["spec"]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["args"][:3] == ["worker", "--role", "decode"]

    pods = get_json(dev_cluster, "pods", "-n", namespace, "-l", "tandem.dev/pool=tiny")["items"]
    assert sorted(p["metadata"]["labels"]["tandem.dev/role"] for p in pods) == [
        "decode", "prefill", "router",
    ]  # fmt: skip
    assert all(p["status"]["phase"] == "Running" for p in pods)
    # The per-role Services' labels reach their EndpointSlices, which the routers select.
    slices = wait_for(
        lambda: get_json(dev_cluster, "endpointslices", "-n", namespace,
                         "-l", "tandem.dev/pool=tiny,tandem.dev/role=decode")["items"],
        20, "an EndpointSlice labelled with role decode",
    )  # fmt: skip
    assert slices[0]["endpoints"] and slices[0]["ports"][0]["port"] == 50051

    events = get_json(dev_cluster, "events", "-n", namespace,
                      "--field-selector", "involvedObject.name=tiny")["items"]  # fmt: skip
    assert {"Created", "AllReplicasReady"} <= {e["reason"] for e in events}


def test_scaling_decode_updates_deployment_and_status(
    dev_cluster: DevCluster, namespace: str, operator: OperatorProcess
) -> None:
    dev_cluster.kubectl("patch", "inferencepool.tandem.dev", "tiny", "-n", namespace,
                        "--type=merge", "-p", '{"spec": {"decode": {"replicas": 3}}}')  # fmt: skip
    ready = _ready_with({"decode": "3/3", "prefill": "1/1"})
    wait_for(lambda: ready(_pool(dev_cluster, namespace)), READY_WITHIN,
             "decode 3/3 in the pool's status", operator.tail)  # fmt: skip
    deploy = get_json(dev_cluster, "deployment", "tiny-decode", "-n", namespace)
    assert deploy["spec"]["replicas"] == 3 and deploy["status"]["readyReplicas"] == 3
    budget = get_json(dev_cluster, "pdb", "tiny-decode", "-n", namespace)
    assert budget is not None and budget["spec"]["maxUnavailable"] == 1


def test_hand_edits_of_owned_deployments_are_reverted(
    dev_cluster: DevCluster, namespace: str, operator: OperatorProcess
) -> None:
    dev_cluster.kubectl("scale", "deployment", "tiny-decode", "--replicas=1", "-n", namespace)
    dev_cluster.kubectl("set", "image", "deployment/tiny-prefill", "worker=evil:1", "-n", namespace)

    def reverted() -> bool:
        decode = get_json(dev_cluster, "deployment", "tiny-decode", "-n", namespace)
        prefill = get_json(dev_cluster, "deployment", "tiny-prefill", "-n", namespace)
        image = prefill["spec"]["template"]["spec"]["containers"][0]["image"]
        return bool(decode["spec"]["replicas"] == 3 and image == "tandem:test")

    wait_for(reverted, 30, "hand edits to be reverted", operator.tail)
    managers = get_json(dev_cluster, "deployment", "tiny-decode", "-n", namespace,
                        "--show-managed-fields")["metadata"]["managedFields"]  # fmt: skip
    assert any(m["manager"] == "tandem-operator" and m["operation"] == "Apply" for m in managers)


def test_operator_restart_mid_reconcile_converges_without_duplicates(
    dev_cluster: DevCluster, namespace: str, operator: OperatorProcess
) -> None:
    pool = yaml.safe_load(MINIMAL.read_text())
    pool["metadata"]["name"] = "restart"
    pool["spec"]["decode"] = {"replicas": 2}
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pool))
    # Kill it as soon as it has started writing owned objects (or at once if it was quick).
    wait_for(lambda: _owned(dev_cluster, namespace, "restart"), 20, "first owned object",
             operator.tail)  # fmt: skip
    operator.kill()
    operator.start()
    ready = _ready_with({"prefill": "1/1", "decode": "2/2", "router": "1/1"})
    wait_for(lambda: ready(_pool(dev_cluster, namespace, "restart")), READY_WITHIN,
             "pool restart to be Ready after the operator restarted", operator.tail)  # fmt: skip
    kinds = sorted(
        (o["kind"], o["metadata"]["name"]) for o in _owned(dev_cluster, namespace, "restart")
    )
    assert kinds == sorted(
        [("Deployment", f"restart-{r}") for r in ("router", "prefill", "decode")]
        + [("Service", f"restart-{r}") for r in ("router", "prefill", "decode")]
        + [("ServiceAccount", "restart-router"), ("Role", "restart-router"),
           ("RoleBinding", "restart-router"), ("PodDisruptionBudget", "restart-decode")]
    )  # fmt: skip
    sets = get_json(dev_cluster, "replicasets", "-n", namespace, "-l", "tandem.dev/pool=restart")
    assert len(sets["items"]) == 3  # one rollout per Deployment: nothing applied twice differently
    pods = get_json(dev_cluster, "pods", "-n", namespace, "-l", "tandem.dev/pool=restart")
    assert len(pods["items"]) == 4


def test_deleting_the_pool_deletes_what_it_owns(
    dev_cluster: DevCluster, namespace: str, operator: OperatorProcess
) -> None:
    assert _owned(dev_cluster, namespace)
    dev_cluster.kubectl("delete", "inferencepool.tandem.dev", "tiny", "-n", namespace)
    wait_for(lambda: not _owned(dev_cluster, namespace), 60,
             "the garbage collector to remove tiny's objects", operator.tail)  # fmt: skip
    assert _owned(dev_cluster, namespace, "restart")  # the other pool is untouched


def test_operator_process_survived(operator: OperatorProcess) -> None:
    assert operator.proc is not None and operator.proc.poll() is None, operator.tail()
    assert "Traceback" not in operator.log.read_text(), operator.tail(200)
