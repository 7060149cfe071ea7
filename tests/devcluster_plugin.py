"""pytest plugin: the local Kubernetes control plane (`hack/devcluster.py`) as fixtures.

Registered from `tests/conftest.py`. Real etcd, kube-apiserver, kube-controller-manager
and kube-scheduler; kwok simulates the nodes (default 4 x 8 `nvidia.com/gpu`) and the pod
lifecycle. Pod IPs are simulated: nothing listens on them, never connect to one.

Fixtures
--------
``dev_cluster`` (session scope) -> `DevCluster`
    Starts the cluster once per machine and session, or reuses one that runs already
    (`make dev-cluster`, or another test session; shared clusters are reference-counted
    and stopped by the last test session that used one it started). Attributes:

    - ``kubeconfig``: admin kubeconfig (token + certificate-authority; works with kopf and
      the `kubernetes` client); ``user_kubeconfig``: same cluster, non-admin token
    - ``server`` (https URL), ``ca_file``, ``admin_token`` (group system:masters),
      ``user_token`` (user ``tandem-user``, no groups: RBAC applies)
    - ``kubectl_bin``, ``helm_bin``, ``kwok_bin``: paths of binaries matching the server
    - ``kubectl(*args, input=None, check=True, kubeconfig=None, timeout=60)`` ->
      `subprocess.CompletedProcess[str]`; with ``check`` a non-zero exit fails the test
      with kubectl's stderr
    - ``helm(*args, ...)``: the same for helm
    - ``env(kubeconfig=None)``: `os.environ` plus KUBECONFIG, for subprocesses
    - while the session runs, KUBECONFIG (and the `kubernetes` client's default, even if
      it was imported earlier) names the admin kubeconfig: `kopf.testing.KopfRunner` and
      `kubernetes.config.load_kube_config()` reach the dev cluster without arguments
    - ``log_dir``: one ``<component>.log`` per component
    - ``nodes``, ``gpus_per_node``: the simulated capacity

``k8s_namespace`` (function scope) -> str
    A fresh namespace whose default ServiceAccount exists (so pods are admitted);
    deleted (without waiting) after the test.

Tests that use either fixture are marked `k8s` automatically. With TANDEM_K8S_TESTS=0
they are skipped, saying so; otherwise missing binaries are built (`hack/kube-local/
build.sh`, cold: tens of minutes; `make test` builds them first) and a failure to build
or start fails the tests. When a test that used the cluster fails, the tail of every
component log is appended to its report.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tandem import env as tandem_env

REPO = Path(__file__).resolve().parent.parent
CLUSTER_FIXTURES = ("dev_cluster", "k8s_namespace")


def _load_devcluster() -> ModuleType:
    """hack/ is not a package: load hack/devcluster.py by path, once."""
    if "devcluster" in sys.modules:
        return sys.modules["devcluster"]
    spec = importlib.util.spec_from_file_location("devcluster", REPO / "hack" / "devcluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["devcluster"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


devcluster = _load_devcluster()


@dataclass(frozen=True)
class DevCluster:
    """What a test needs of the running cluster (see the module docstring)."""

    kubeconfig: Path
    user_kubeconfig: Path
    server: str
    ca_file: Path
    admin_token: str
    user_token: str
    kubectl_bin: Path
    helm_bin: Path
    kwok_bin: Path
    log_dir: Path
    nodes: int
    gpus_per_node: int

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(kubeconfig or self.kubeconfig)}

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        return self._run(self.kubectl_bin, args, input, check, kubeconfig, timeout)

    def helm(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        return self._run(self.helm_bin, args, input, check, kubeconfig, timeout)

    def _run(
        self,
        binary: Path,
        args: tuple[str, ...],
        input: str | None,
        check: bool,
        kubeconfig: Path | None,
        timeout: float,
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(binary), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args]
        result = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(kubeconfig),
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"{binary.name} {' '.join(args)} exited {result.returncode}:\n{result.stderr}",
                pytrace=False,
            )
        return result


def component_log_tails(log_dir: Path, lines: int = 40) -> str:
    parts = []
    for log in sorted(log_dir.glob("*.log")):
        parts.append(f"----- {log} (last {lines} lines)\n{devcluster.log_tail(log, lines)}")
    return "\n".join(parts) if parts else f"(no logs in {log_dir})"


def _ensure_binaries() -> Path:
    build = subprocess.run([str(devcluster.BUILD_SCRIPT)], capture_output=True, text=True)
    if build.returncode != 0:
        pytest.fail(
            f"building the control plane failed ({devcluster.BUILD_SCRIPT}):\n"
            f"{build.stderr[-4000:]}",
            pytrace=False,
        )
    return Path(devcluster.bin_dir())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    enabled = tandem_env.read().k8s_tests
    skip = pytest.mark.skip(reason=f"{tandem_env.TANDEM_K8S_TESTS}=0: Kubernetes tests are off")
    for item in items:
        uses_cluster = any(name in CLUSTER_FIXTURES for name in getattr(item, "fixturenames", ()))
        if uses_cluster and item.get_closest_marker("k8s") is None:
            item.add_marker(pytest.mark.k8s)
        if not enabled and item.get_closest_marker("k8s") is not None:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[Any]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if not report.failed or item.get_closest_marker("k8s") is None:
        return
    cluster = devcluster.load(_state_dir())
    if cluster is not None:
        report.sections.append(("dev cluster logs", component_log_tails(cluster.log_dir)))


def _state_dir() -> Path:
    return tandem_env.read().home / "devcluster"


def _point_clients_at(patch: pytest.MonkeyPatch, kubeconfig: Path) -> None:
    """Make KUBECONFIG name the dev cluster for this session, so that kopf and the
    `kubernetes` client find it (and no test touches another cluster by accident). The
    client reads KUBECONFIG once, when first imported; update its copy if it is loaded."""
    patch.setenv("KUBECONFIG", str(kubeconfig))
    kube_config = sys.modules.get("kubernetes.config.kube_config")
    if kube_config is not None:
        patch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))


@pytest.fixture(scope="session")
def dev_cluster() -> Iterator[DevCluster]:
    if not tandem_env.read().k8s_tests:
        pytest.skip(f"{tandem_env.TANDEM_K8S_TESTS}=0: Kubernetes tests are off")
    bin_dir = _ensure_binaries()
    state_dir = _state_dir()
    spec = devcluster.ClusterSpec(bin_dir=bin_dir, state_dir=state_dir)
    try:
        cluster = devcluster.start(spec, started_by="pytest", user_pid=os.getpid())
    except devcluster.ClusterError as err:
        pytest.fail(f"the local control plane did not start: {err}", pytrace=False)
    try:
        with pytest.MonkeyPatch.context() as patch:
            _point_clients_at(patch, cluster.kubeconfig)
            yield DevCluster(
                kubeconfig=cluster.kubeconfig,
                user_kubeconfig=cluster.user_kubeconfig,
                server=cluster.server,
                ca_file=cluster.ca_file,
                admin_token=cluster.admin_token,
                user_token=cluster.user_token,
                kubectl_bin=cluster.binary("kubectl"),
                helm_bin=cluster.binary("helm"),
                kwok_bin=cluster.binary("kwok"),
                log_dir=cluster.log_dir,
                nodes=cluster.nodes,
                gpus_per_node=cluster.gpus_per_node,
            )
    finally:
        devcluster.release(state_dir, os.getpid())


@pytest.fixture
def k8s_namespace(dev_cluster: DevCluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    dev_cluster.kubectl("create", "namespace", name)
    # Pods are refused until the controller-manager has made the default ServiceAccount.
    deadline = time.monotonic() + 30
    while dev_cluster.kubectl(
        "-n", name, "get", "serviceaccount", "default", check=False
    ).returncode:
        if time.monotonic() > deadline:
            pytest.fail(f"namespace {name}: no default ServiceAccount after 30 s", pytrace=False)
        time.sleep(0.1)
    yield name
    dev_cluster.kubectl(
        "delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False
    )
