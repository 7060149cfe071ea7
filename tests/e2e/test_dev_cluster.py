"""The local control plane behaves like a real cluster where the product relies on it.

The first block checks the harness's pure parts (no cluster); the `k8s` tests run against
the cluster of `hack/devcluster.py` through the `dev_cluster` fixture.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.devcluster_plugin import DevCluster, devcluster

# ---------------------------------------------------------------- pure parts


def _spec(**kw: Any) -> Any:
    return devcluster.ClusterSpec(bin_dir=Path("/b"), state_dir=Path("/s"), **kw)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"nodes": 0}, "nodes"),
        ({"nodes": 2001}, "nodes"),
        ({"gpus_per_node": -1}, "gpus_per_node"),
        ({"cpus_per_node": 0}, "cpus_per_node"),
    ],
)
def test_cluster_spec_rejects_bad_sizes(kw: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _spec(**kw)


@pytest.mark.parametrize(("gpus", "expected"), [(8, "8"), (2, "2"), (0, None)])
def test_node_manifest_carries_gpu_capacity_and_kwok_annotation(
    gpus: int, expected: str | None
) -> None:
    node = devcluster.node_manifest(3, _spec(gpus_per_node=gpus))
    assert node["metadata"]["name"] == "kwok-gpu-3"
    assert node["metadata"]["annotations"][devcluster.KWOK_ANNOTATION] == "fake"
    for field in ("capacity", "allocatable"):
        assert node["status"][field].get("nvidia.com/gpu") == expected


def test_token_file_gives_admin_masters_and_user_no_groups() -> None:
    tokens = devcluster.Tokens(
        admin="a1", user="u1", controller_manager="c1", scheduler="s1", kwok="k1"
    )
    rows = {line.split(",")[0]: line for line in devcluster.token_csv(tokens).splitlines()}
    assert rows["a1"] == 'a1,tandem-admin,tandem-admin,"system:masters"'
    assert rows["u1"] == 'u1,tandem-user,tandem-user,""'
    assert rows["c1"].split(",")[1] == "system:kube-controller-manager"
    assert rows["s1"].split(",")[1] == "system:kube-scheduler"


def test_kubeconfig_has_token_and_ca_path() -> None:
    config = yaml.safe_load(
        devcluster.kubeconfig_text("https://127.0.0.1:1", Path("/p/ca.crt"), "u", "t")
    )
    assert config["clusters"][0]["cluster"] == {
        "server": "https://127.0.0.1:1",
        "certificate-authority": "/p/ca.crt",
    }
    assert config["users"][0]["user"] == {"token": "t"}
    assert config["current-context"] == config["contexts"][0]["name"]


def test_components_bind_loopback_ports_only() -> None:
    ports = devcluster.Ports(2001, 2002, 2003, 2004, 2005, 2006)
    argv = devcluster.component_args(
        _spec(), ports, devcluster.Layout(Path("/s")), Path("/st.yaml")
    )
    assert list(argv) == list(devcluster.COMPONENTS)
    flat = " ".join(" ".join(a) for a in argv.values())
    for port in (2001, 2002, 2003, 2004, 2005, 2006):
        assert f"127.0.0.1:{port}" in flat or f"--secure-port={port}" in flat
    assert "0.0.0.0" not in flat
    assert "--etcd-servers=http://127.0.0.1:2001" in argv["kube-apiserver"]


def test_users_are_counted_and_dead_ones_forgotten(tmp_path: Path) -> None:
    devcluster.attach(tmp_path, os.getpid())
    (tmp_path / "users" / "999999999").write_text("1")  # no such process
    assert devcluster.detach(tmp_path, 424242) == 1  # only this process is left
    assert sorted(p.name for p in (tmp_path / "users").iterdir()) == [str(os.getpid())]
    assert devcluster.detach(tmp_path, os.getpid()) == 0


def test_stop_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep")
    with pytest.raises(devcluster.ClusterError, match="no cluster state"):
        devcluster.stop(tmp_path)
    assert (tmp_path / "precious.txt").exists()


# ---------------------------------------------------------------- against the cluster

Check = Callable[[], Any]


def wait_for(what: str, check: Check, timeout: float = 60.0) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def get_json(cluster: DevCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


WIDGET_CRD = textwrap.dedent("""
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata: {name: widgets.devcluster.tandem.dev}
    spec:
      group: devcluster.tandem.dev
      scope: Namespaced
      names: {plural: widgets, singular: widget, kind: Widget}
      versions:
      - name: v1
        served: true
        storage: true
        subresources: {status: {}}
        schema:
          openAPIV3Schema:
            type: object
            properties:
              spec:
                type: object
                required: [size]
                properties:
                  size: {type: integer, minimum: 1, maximum: 10}
                  color: {type: string, enum: [red, blue]}
              status:
                type: object
                x-kubernetes-preserve-unknown-fields: true
""")


@pytest.fixture(scope="module")
def widget_crd(dev_cluster: DevCluster) -> str:
    dev_cluster.kubectl("apply", "-f", "-", input=WIDGET_CRD)
    dev_cluster.kubectl(
        "wait", "--for=condition=Established", "crd/widgets.devcluster.tandem.dev", "--timeout=30s"
    )
    return "widgets.devcluster.tandem.dev"


def widget(name: str, size: int, color: str = "red") -> str:
    return json.dumps(
        {
            "apiVersion": "devcluster.tandem.dev/v1",
            "kind": "Widget",
            "metadata": {"name": name},
            "spec": {"size": size, "color": color},
        }
    )


@pytest.mark.k8s
def test_crd_schema_rejects_invalid_field_with_message(
    dev_cluster: DevCluster, widget_crd: str, k8s_namespace: str
) -> None:
    ok = dev_cluster.kubectl("-n", k8s_namespace, "create", "-f", "-", input=widget("w1", 3))
    assert "widget.devcluster.tandem.dev/w1 created" in ok.stdout
    bad = dev_cluster.kubectl(
        "-n", k8s_namespace, "create", "-f", "-", input=widget("w2", 50), check=False
    )
    assert bad.returncode != 0
    assert "spec.size" in bad.stderr and "less than or equal to 10" in bad.stderr, bad.stderr
    bad = dev_cluster.kubectl(
        "-n", k8s_namespace, "create", "-f", "-", input=widget("w3", 2, "green"), check=False
    )
    assert bad.returncode != 0 and "spec.color" in bad.stderr and "Unsupported value" in bad.stderr


@pytest.mark.k8s
def test_non_admin_token_is_subject_to_rbac(dev_cluster: DevCluster) -> None:
    admin = dev_cluster.kubectl("auth", "can-i", "list", "nodes", check=False)
    user = dev_cluster.kubectl(
        "auth", "can-i", "list", "nodes", kubeconfig=dev_cluster.user_kubeconfig, check=False
    )
    assert (admin.stdout.strip(), user.stdout.strip()) == ("yes", "no")


def gpu_pod_spec(gpus: int) -> dict[str, Any]:
    return {
        "containers": [
            {
                "name": "w",
                "image": "tandem:test",
                "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
            }
        ]
    }


@pytest.mark.k8s
def test_gpu_deployment_pods_run_on_simulated_gpu_nodes(
    dev_cluster: DevCluster, k8s_namespace: str
) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "gpu"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "gpu"}},
            "template": {"metadata": {"labels": {"app": "gpu"}}, "spec": gpu_pod_spec(1)},
        },
    }
    dev_cluster.kubectl("-n", k8s_namespace, "apply", "-f", "-", input=json.dumps(deployment))

    def running_pods() -> list[dict[str, Any]]:
        pods = get_json(dev_cluster, "-n", k8s_namespace, "pods", "-l", "app=gpu")["items"]
        up = [p for p in pods if p["status"].get("phase") == "Running" and p["status"].get("podIP")]
        return up if len(up) == 3 else []

    pods = wait_for("3 GPU pods Running with pod IPs", running_pods)
    nodes = {n["metadata"]["name"]: n for n in get_json(dev_cluster, "nodes")["items"]}
    for pod in pods:
        node = nodes[pod["spec"]["nodeName"]]
        assert int(node["status"]["allocatable"]["nvidia.com/gpu"]) == dev_cluster.gpus_per_node
    ready = wait_for(
        "the Deployment to report 3 ready replicas",
        lambda: (
            get_json(dev_cluster, "-n", k8s_namespace, "deployment", "gpu")["status"].get(
                "readyReplicas"
            )
            == 3
        ),
    )
    assert ready


@pytest.mark.k8s
def test_pod_asking_more_gpus_than_any_node_stays_pending(
    dev_cluster: DevCluster, k8s_namespace: str
) -> None:
    too_many = dev_cluster.gpus_per_node + 1
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "greedy"},
        "spec": gpu_pod_spec(too_many),
    }
    dev_cluster.kubectl("-n", k8s_namespace, "apply", "-f", "-", input=json.dumps(pod))

    def failed_scheduling() -> list[dict[str, Any]]:
        events = get_json(
            dev_cluster,
            "-n",
            k8s_namespace,
            "events",
            "--field-selector",
            "involvedObject.name=greedy",
        )["items"]
        return [e for e in events if e["reason"] == "FailedScheduling"]

    events = wait_for("a FailedScheduling event", failed_scheduling)
    assert "Insufficient nvidia.com/gpu" in events[0]["message"]
    status = get_json(dev_cluster, "-n", k8s_namespace, "pod", "greedy")["status"]
    assert status["phase"] == "Pending" and not status.get("podIP")


@pytest.mark.k8s
def test_garbage_collector_deletes_owned_objects(
    dev_cluster: DevCluster, k8s_namespace: str
) -> None:
    ns = ("-n", k8s_namespace)
    dev_cluster.kubectl(*ns, "create", "configmap", "owner")
    uid = get_json(dev_cluster, *ns, "configmap", "owner")["metadata"]["uid"]
    owned = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
            ],
        },
    }
    dev_cluster.kubectl(*ns, "apply", "-f", "-", input=json.dumps(owned))
    dev_cluster.kubectl(*ns, "delete", "configmap", "owner")
    gone = wait_for(
        "the owned ConfigMap to be collected",
        lambda: (
            dev_cluster.kubectl(
                *ns, "get", "configmap", "owned", "--ignore-not-found", "-o", "name"
            ).stdout.strip()
            == ""
        ),
    )
    assert gone


@pytest.mark.k8s
def test_namespace_deletion_completes(dev_cluster: DevCluster) -> None:
    name = f"doomed-{time.monotonic_ns() % 10**8}"
    dev_cluster.kubectl("create", "namespace", name)
    dev_cluster.kubectl("-n", name, "create", "configmap", "c")
    dev_cluster.kubectl(
        "-n", name, "create", "deployment", "d", "--image=tandem:test", "--replicas=1"
    )
    wait_for(
        "the pod of the Deployment", lambda: get_json(dev_cluster, "-n", name, "pods")["items"]
    )
    dev_cluster.kubectl("delete", "namespace", name, "--wait=false")
    gone = wait_for(
        f"namespace {name} to disappear",
        lambda: (
            dev_cluster.kubectl(
                "get", "namespace", name, "--ignore-not-found", "-o", "name"
            ).stdout.strip()
            == ""
        ),
        timeout=90,
    )
    assert gone


OPERATOR = textwrap.dedent("""
    import kopf

    @kopf.on.startup()
    def configure(settings: kopf.OperatorSettings, **_):
        settings.watching.server_timeout = 10
        settings.posting.enabled = False

    @kopf.on.create("devcluster.tandem.dev", "v1", "widgets")
    def created(spec, patch, **_):
        patch.status["doubled"] = spec["size"] * 2
""")


@pytest.mark.k8s
def test_kopf_operator_reacts_to_custom_resource(
    dev_cluster: DevCluster,
    widget_crd: str,
    k8s_namespace: str,
    tmp_path: Path,
) -> None:
    from kopf.testing import KopfRunner

    operator = tmp_path / "operator.py"
    operator.write_text(OPERATOR)
    # No KUBECONFIG here: the dev_cluster fixture points kopf at the cluster.
    args = ["run", "--standalone", "--namespace", k8s_namespace, str(operator)]
    with KopfRunner(args, timeout=60) as runner:
        dev_cluster.kubectl("-n", k8s_namespace, "create", "-f", "-", input=widget("w", 4))
        doubled = wait_for(
            "kopf to write status.doubled",
            lambda: (
                get_json(dev_cluster, "-n", k8s_namespace, "widget", "w")
                .get("status", {})
                .get("doubled")
            ),
        )
    assert doubled == 8
    assert runner.exit_code == 0, runner.output
    assert runner.exception is None
    assert "Handler 'created' succeeded" in runner.output
