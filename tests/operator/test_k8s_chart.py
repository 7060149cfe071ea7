"""The Helm chart: lint, template, and a real install into the local control plane."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tandem.api.crd import crd
from tests.devcluster_plugin import DevCluster
from tests.operator.kube_harness import KUBE_VERSION, REPO, get_json, wait_for

pytestmark = pytest.mark.k8s

CHART = str(REPO / "charts" / "tandem")
MONITORING = ("monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PodMonitor")


def _template(cluster: DevCluster, *args: str) -> list[dict[str, Any]]:
    out = cluster.helm(
        "template",
        "rel",
        CHART,
        "--namespace",
        "tandem-system",
        "--kube-version",
        KUBE_VERSION,
        *args,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _kinds(docs: list[dict[str, Any]]) -> set[str]:
    return {d["kind"] for d in docs}


def test_lint(dev_cluster: DevCluster) -> None:
    result = dev_cluster.helm("lint", "--strict", CHART, "--kube-version", KUBE_VERSION)
    assert "0 chart(s) failed" in result.stdout


def test_lint_rejects_values_against_the_schema(dev_cluster: DevCluster) -> None:
    result = dev_cluster.helm(
        "lint", CHART, "--kube-version", KUBE_VERSION, "--set", "replicaCount=2", check=False
    )
    assert result.returncode != 0 and "replicaCount" in result.stdout + result.stderr


def test_template_defaults(dev_cluster: DevCluster) -> None:
    docs = _template(dev_cluster, "--include-crds")
    assert _kinds(docs) == {
        "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
        "Deployment", "Service",
    }  # fmt: skip
    (definition,) = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert definition == crd()  # the chart ships the generated CRD unchanged
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "ghcr.io/tandem-serve/tandem:0.1.0"
    assert container["args"][0] == "operator"
    assert "--default-image=ghcr.io/tandem-serve/tandem:0.1.0" in container["args"]
    assert deploy["spec"]["strategy"]["type"] == "Recreate"


def test_template_monitors_only_with_prometheus_operator(dev_cluster: DevCluster) -> None:
    plain = _kinds(_template(dev_cluster))
    assert not {"ServiceMonitor", "PodMonitor"} & plain
    flags = [arg for api in MONITORING for arg in ("--api-versions", api)]
    assert {"ServiceMonitor", "PodMonitor"} <= _kinds(_template(dev_cluster, *flags))


def test_template_watch_namespaces_uses_rolebindings(dev_cluster: DevCluster) -> None:
    docs = _template(dev_cluster, "--set", "operator.watchNamespaces={a,b}")
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["a", "b"]
    assert "ClusterRoleBinding" not in _kinds(docs)
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=a" in args and "--namespace=b" in args


def test_clusterrole_grants_only_what_the_operator_uses(dev_cluster: DevCluster) -> None:
    (role,) = [d for d in _template(dev_cluster) if d["kind"] == "ClusterRole"]
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert not any("*" in item for g in granted for item in g)
    assert not any(v in ("update", "deletecollection", "escalate", "bind") for *_, v in granted)
    assert ("", "secrets", "get") not in granted
    assert ("apps", "deployments", "patch") in granted  # server-side apply
    # The scaling loop: list, mark/relabel and delete drained pods; it never creates pods.
    pod_verbs = {v for g, r, v in granted if (g, r) == ("", "pods")}
    assert pod_verbs == {"get", "list", "patch", "delete"}


@pytest.fixture
def release(dev_cluster: DevCluster, k8s_namespace: str) -> Iterator[str]:
    name = f"t{uuid.uuid4().hex[:6]}"
    yield name
    dev_cluster.helm("uninstall", name, "-n", k8s_namespace, "--wait=false", check=False)


def test_install(dev_cluster: DevCluster, k8s_namespace: str, release: str) -> None:
    dev_cluster.helm("install", release, CHART, "-n", k8s_namespace,
                     "--set", f"operator.watchNamespaces={{{k8s_namespace}}}")  # fmt: skip
    stored = get_json(dev_cluster, "crd", "inferencepools.tandem.dev")
    assert stored is not None and stored["spec"]["names"]["shortNames"] == ["tpool"]
    deployment = f"{release}-tandem"

    def running() -> list[dict[str, Any]]:
        pods = get_json(dev_cluster, "pods", "-n", k8s_namespace,
                        "-l", f"app.kubernetes.io/instance={release}")["items"]  # fmt: skip
        return [p for p in pods if p["status"].get("phase") == "Running"]

    (pod,) = wait_for(running, 60, f"the operator pod of {deployment} to run")
    assert pod["spec"]["serviceAccountName"] == deployment
    can = dev_cluster.kubectl(
        "auth", "can-i", "patch", "deployments.apps", "-n", k8s_namespace,
        f"--as=system:serviceaccount:{k8s_namespace}:{deployment}",
    )  # fmt: skip
    assert can.stdout.strip() == "yes"
    cannot = dev_cluster.kubectl(
        "auth", "can-i", "get", "secrets", "-n", k8s_namespace,
        f"--as=system:serviceaccount:{k8s_namespace}:{deployment}", check=False,
    )  # fmt: skip
    assert cannot.stdout.strip() == "no"
