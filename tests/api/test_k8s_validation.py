"""The API server itself rejects bad InferencePools (OpenAPI schema + CEL rules), naming
the field, and accepts every example. Server-side dry run: nothing is stored."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.devcluster_plugin import DevCluster

pytestmark = pytest.mark.k8s

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "inferencepools.tandem.dev.yaml"


@pytest.fixture(scope="module")
def crd(dev_cluster: DevCluster) -> None:
    dev_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    dev_cluster.kubectl(
        "wait", "--for=condition=Established", "crd/inferencepools.tandem.dev", "--timeout=30s"
    )


def pool(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": {"name": "m", "uri": "pvc://models/m"}}
    body.update(copy.deepcopy(spec))
    return {
        "apiVersion": "tandem.dev/v1alpha1",
        "kind": "InferencePool",
        "metadata": {"name": "bad"},
        "spec": body,
    }


def _apply(cluster: DevCluster, ns: str, doc: dict[str, Any]) -> Any:
    return cluster.kubectl(
        "apply", "--dry-run=server", "-n", ns, "-f", "-", input=json.dumps(doc), check=False
    )


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_accepted(
    dev_cluster: DevCluster, crd: None, k8s_namespace: str, path: Path
) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        result = _apply(dev_cluster, k8s_namespace, doc)
        assert result.returncode == 0, result.stderr


TOO_LONG = pool()
TOO_LONG["metadata"]["name"] = "x" * 51

INVALID = [
    # CEL rules
    ("decode replicas above max", pool(decode={"replicas": 5, "maxReplicas": 4}),
     "spec.decode.replicas"),
    ("prefill min above max", pool(prefill={"replicas": 2, "minReplicas": 3, "maxReplicas": 2}),
     "spec.prefill.minReplicas"),
    ("GPU budget below the minimums",
     pool(prefill={"minReplicas": 2, "replicas": 2, "gpusPerReplica": 2},
          decode={"minReplicas": 2, "replicas": 2}, autoscaling={"maxGPUs": 5}),
     "spec.autoscaling.maxGPUs"),
    ("duplicate priority classes",
     pool(traffic={"priorityClasses": [{"name": "a", "priority": 1}, {"name": "a", "priority": 2}]}),
     "spec.traffic.priorityClasses"),
    ("zero SLO", pool(autoscaling={"ttftP99": "0s"}), "spec.autoscaling.ttftP99"),
    ("zero class SLO",
     pool(traffic={"priorityClasses": [{"name": "a", "priority": 1, "ttftSLO": "0ms"}]}),
     "ttftSLO"),
    ("name too long for its Services", TOO_LONG, "metadata.name"),
    ("prometheus source without its URL",
     pool(autoscaling={"metrics": {"source": "prometheus"}}), "spec.autoscaling.metrics.prometheus"),
    ("scaling loop faster than 1s", pool(autoscaling={"metrics": {"interval": "500ms"}}),
     "spec.autoscaling.metrics.interval"),
    ("rate window under 1s",
     pool(autoscaling={"metrics": {"source": "prometheus",
                                   "prometheus": {"url": "http://p:9090", "window": "0s"}}}),
     "spec.autoscaling.metrics.prometheus.window"),
    ("prometheus URL not http", pool(autoscaling={"metrics": {"source": "prometheus",
                                                            "prometheus": {"url": "prom:9090"}}}),
     "spec.autoscaling.metrics.prometheus.url"),
    ("busy target above 100%", pool(autoscaling={"targetBusyPercent": 120}),
     "spec.autoscaling.targetBusyPercent"),
    ("KV target zero", pool(autoscaling={"targetKVUsagePercent": 0}),
     "spec.autoscaling.targetKVUsagePercent"),
    ("tolerance 100%", pool(autoscaling={"tolerancePercent": 100}),
     "spec.autoscaling.tolerancePercent"),
    ("window not a duration", pool(autoscaling={"scaleDownWindow": "two minutes"}),
     "spec.autoscaling.scaleDownWindow"),
    ("cooldown negative", pool(autoscaling={"cooldown": "-1s"}), "spec.autoscaling.cooldown"),
    ("step zero", pool(autoscaling={"scaleUpStep": 0}), "spec.autoscaling.scaleUpStep"),
    ("scale-down percent zero", pool(autoscaling={"scaleDownPercent": 0}),
     "spec.autoscaling.scaleDownPercent"),
    ("negative minRequests", pool(autoscaling={"minRequests": -1}),
     "spec.autoscaling.minRequests"),
    # types, enums, patterns, bounds
    ("replicas not an integer", pool(decode={"replicas": "two"}), "spec.decode.replicas"),
    ("unknown dtype", pool(model={"name": "m", "uri": "pvc://m", "dtype": "int8"}),
     "spec.model.dtype"),
    ("unsupported uri", pool(model={"name": "m", "uri": "s3://bucket/m"}), "spec.model.uri"),
    ("too many GPUs per pod", pool(prefill={"gpusPerReplica": 17}), "spec.prefill.gpusPerReplica"),
    ("negative replicas", pool(router={"replicas": -1}), "spec.router.replicas"),
    ("no model", {**pool(), "spec": {}}, "spec.model"),
    # tolerations the Deployment's pod template would be refused with
    ("Exists toleration with a value",
     pool(decode={"tolerations": [{"key": "gpu", "operator": "Exists", "value": "x"}]}),
     "spec.decode.tolerations[0]"),
    ("toleration without key not Exists", pool(prefill={"tolerations": [{"value": "x"}]}),
     "spec.prefill.tolerations[0]"),
    ("tolerationSeconds without NoExecute",
     pool(router={"tolerations": [{"key": "k", "tolerationSeconds": 30}]}),
     "spec.router.tolerations[0]"),
]  # fmt: skip


@pytest.mark.parametrize(("doc", "field"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_pools_are_rejected_naming_the_field(
    dev_cluster: DevCluster, crd: None, k8s_namespace: str, doc: dict[str, Any], field: str
) -> None:
    result = _apply(dev_cluster, k8s_namespace, doc)
    assert result.returncode != 0, f"accepted: {json.dumps(doc['spec'])}"
    assert field in result.stderr, result.stderr


def test_short_name_and_printer_columns(
    dev_cluster: DevCluster, crd: None, k8s_namespace: str
) -> None:
    doc = pool()
    doc["metadata"]["name"] = "cols"
    dev_cluster.kubectl("apply", "-n", k8s_namespace, "-f", "-", input=json.dumps(doc))
    table = dev_cluster.kubectl("get", "tpool", "-n", k8s_namespace).stdout
    header = table.splitlines()[0].split()
    assert header == ["NAME", "MODEL", "PREFILL", "DECODE", "READY", "AGE"]
    stored = json.loads(
        dev_cluster.kubectl(
            "get", "inferencepools.tandem.dev", "cols", "-n", k8s_namespace, "-o", "json"
        ).stdout
    )
    # The API server filled the defaults in, as the pydantic model does.
    assert stored["spec"]["decode"] == {"replicas": 1, "minReplicas": 1, "gpusPerReplica": 1}
    assert stored["spec"]["kvTransfer"] == {"transport": "auto"}
