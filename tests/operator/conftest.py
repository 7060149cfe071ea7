"""Fixtures shared by the operator's tests on the local control plane."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.devcluster_plugin import DevCluster
from tests.operator.kube_harness import KUBE_VERSION, REPO

CRD = REPO / "crds" / "inferencepools.tandem.dev.yaml"
CHART = REPO / "charts" / "tandem"


@pytest.fixture(scope="module")
def crd(dev_cluster: DevCluster) -> None:
    dev_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    dev_cluster.kubectl(
        "wait", "--for=condition=Established", "crd/inferencepools.tandem.dev", "--timeout=30s"
    )


@pytest.fixture(scope="module")
def operator_identity(dev_cluster: DevCluster) -> Iterator[Path]:
    """Bind the chart's own ClusterRole to the non-admin user: the test proves it suffices."""
    name = f"tandem-op-test-{uuid.uuid4().hex[:6]}"
    rendered = dev_cluster.helm(
        "template",
        name,
        str(CHART),
        "--show-only",
        "templates/clusterrole.yaml",
        "--kube-version",
        KUBE_VERSION,
    ).stdout
    role = yaml.safe_load(rendered)
    assert role["kind"] == "ClusterRole" and role["metadata"]["name"] == name
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": role["metadata"]["name"]},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": role["metadata"]["name"],
        },
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "tandem-user"}
        ],
    }
    docs = {"apiVersion": "v1", "kind": "List", "items": [role, binding]}
    dev_cluster.kubectl("apply", "-f", "-", input=json.dumps(docs))
    yield dev_cluster.user_kubeconfig
    for kind in ("clusterrolebinding", "clusterrole"):
        dev_cluster.kubectl("delete", kind, role["metadata"]["name"], "--wait=false", check=False)
