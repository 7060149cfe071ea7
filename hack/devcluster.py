"""A real local Kubernetes control plane for development and tests, without containers.

Real: etcd, kube-apiserver, kube-controller-manager and kube-scheduler, built from Go
modules by `hack/kube-local/build.sh`. Simulated by kwok: the nodes (kept Ready through
node leases, with `nvidia.com/gpu` capacity) and the pod lifecycle (a scheduled pod
becomes Running with a pod IP; nothing runs and nothing listens on that IP).

    python hack/devcluster.py up [--nodes 4] [--gpus-per-node 8] [--state-dir DIR]
    python hack/devcluster.py status
    python hack/devcluster.py down

`up` is idempotent and prints `export KUBECONFIG=...`; `down` stops only the processes
that `up` started (recorded with their start times in `state.json`) and removes the
state folder. Importable: `start`, `stop`, `running`, `attach`, `detach`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "hack" / "kube-local" / "build.sh"
GPU_RESOURCE = "nvidia.com/gpu"
SERVICE_CIDR = "10.96.0.0/24"
SERVICE_IP = "10.96.0.1"
# Simulated pod IPs: no network lies behind them, so nothing may ever connect to one.
POD_CIDR = "10.244.0.0/16"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
NODE_PREFIX = "kwok-gpu-"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Every component, in start order.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


class ClusterError(RuntimeError):
    """The cluster could not be started, reached or stopped; the message says why."""


@dataclass(frozen=True)
class ClusterSpec:
    """What to start: where the binaries and the state live, and the simulated nodes."""

    bin_dir: Path
    state_dir: Path
    nodes: int = 4
    gpus_per_node: int = 8
    cpus_per_node: int = 64
    memory_per_node: str = "512Gi"
    # Record every request of clients other than the cluster's own components in an
    # audit log (logs/audit.log, JSON lines): scale benchmarks count an operator's calls.
    audit: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= 2000:
            raise ValueError(f"nodes must be between 1 and 2000, got {self.nodes}")
        if not 0 <= self.gpus_per_node <= 64:
            raise ValueError(f"gpus_per_node must be between 0 and 64, got {self.gpus_per_node}")
        if self.cpus_per_node < 1:
            raise ValueError(f"cpus_per_node must be positive, got {self.cpus_per_node}")


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int


@dataclass(frozen=True)
class Tokens:
    admin: str
    user: str
    controller_manager: str
    scheduler: str
    kwok: str


@dataclass(frozen=True)
class Layout:
    """Every file of one cluster, below its state folder."""

    state_dir: Path

    @property
    def pki(self) -> Path:
        return self.state_dir / "pki"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def etcd_data(self) -> Path:
        return self.state_dir / "etcd"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def users(self) -> Path:
        return self.state_dir / "users"

    @property
    def token_file(self) -> Path:
        return self.pki / "tokens.csv"

    def kubeconfig(self, who: str) -> Path:
        return self.state_dir / f"kubeconfig-{who}"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    @property
    def audit_log(self) -> Path:
        return self.logs / "audit.log"

    @property
    def audit_policy(self) -> Path:
        return self.state_dir / "audit-policy.yaml"


@dataclass(frozen=True)
class ProcessRecord:
    """A started process; `start_ticks` tells it apart from a later one with the same pid."""

    component: str
    pid: int
    start_ticks: int


@dataclass(frozen=True)
class Cluster:
    """A running cluster, as tests and tools see it."""

    state_dir: Path
    bin_dir: Path
    server: str
    ca_file: Path
    kubeconfig: Path
    user_kubeconfig: Path
    admin_token: str
    user_token: str
    processes: tuple[ProcessRecord, ...]
    started_by: str
    nodes: int
    gpus_per_node: int

    @property
    def log_dir(self) -> Path:
        return Layout(self.state_dir).logs

    def binary(self, name: str) -> Path:
        return self.bin_dir / name


# ---------------------------------------------------------------- pure parts


def component_args(
    spec: ClusterSpec, ports: Ports, layout: Layout, stages: Path
) -> dict[str, list[str]]:
    """The command line of every component, in start order."""
    pki, b = layout.pki, spec.bin_dir
    etcd_url = f"http://127.0.0.1:{ports.etcd_client}"
    peer_url = f"http://127.0.0.1:{ports.etcd_peer}"
    return {
        "etcd": [
            str(b / "etcd"),
            "--name=default",
            f"--data-dir={layout.etcd_data}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
            # A throw-away store: durability buys nothing and fsync costs seconds.
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ],
        "kube-apiserver": [
            str(b / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports.apiserver}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={layout.token_file}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            # No kubelets and one apiserver: nobody needs the `kubernetes` Endpoints.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            *_audit_args(spec, layout),
        ],
        "kube-controller-manager": [
            str(b / "kube-controller-manager"),
            f"--kubeconfig={layout.kubeconfig('controller-manager')}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports.controller_manager}",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--profiling=false",
        ],
        "kube-scheduler": [
            str(b / "kube-scheduler"),
            f"--kubeconfig={layout.kubeconfig('scheduler')}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports.scheduler}",
            "--leader-elect=false",
            "--profiling=false",
        ],
        "kwok": [
            str(b / "kwok"),
            f"--kubeconfig={layout.kubeconfig('kwok')}",
            f"--config={stages}",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
            f"--cidr={POD_CIDR}",
            "--node-ip=127.0.0.1",
            f"--node-port={ports.kwok}",
            f"--server-address=127.0.0.1:{ports.kwok}",
            "--node-lease-duration-seconds=40",
        ],
    }


# The cluster's own components (and what they run as) are left out of the audit log.
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    users: [kwok-controller, system:kube-controller-manager, system:kube-scheduler]
  - level: None
    userGroups: [system:serviceaccounts, system:nodes]
  - level: Metadata
"""


def _audit_args(spec: ClusterSpec, layout: Layout) -> list[str]:
    if not spec.audit:
        return []
    return [
        f"--audit-policy-file={layout.audit_policy}",
        f"--audit-log-path={layout.audit_log}",
        "--audit-log-format=json",
        "--audit-log-maxsize=2000",  # MB: one file for a whole benchmark run
        "--audit-log-maxbackup=1",
    ]


def token_csv(tokens: Tokens) -> str:
    """The API server's static token file: `token,user,uid,"groups"`."""
    rows = [
        (tokens.admin, "tandem-admin", "system:masters"),
        (tokens.user, "tandem-user", ""),
        (tokens.controller_manager, "system:kube-controller-manager", ""),
        (tokens.scheduler, "system:kube-scheduler", ""),
        (tokens.kwok, "kwok-controller", "system:masters"),
    ]
    return "".join(f'{tok},{user},{user},"{groups}"\n' for tok, user, groups in rows)


def kubeconfig_text(server: str, ca_file: Path, user: str, token: str) -> str:
    """A kubeconfig with a bearer token and the cluster CA (what kopf and the client read)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "tandem-dev",
                "cluster": {"server": server, "certificate-authority": str(ca_file)},
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "tandem-dev", "context": {"cluster": "tandem-dev", "user": user}}],
        "current-context": "tandem-dev",
    }
    return yaml.safe_dump(config, sort_keys=False)


def node_manifest(index: int, spec: ClusterSpec) -> dict[str, Any]:
    """A simulated GPU node; kwok keeps the capacity given here and reports it Ready."""
    name = f"{NODE_PREFIX}{index}"
    resources = {"cpu": str(spec.cpus_per_node), "memory": spec.memory_per_node, "pods": "110"}
    if spec.gpus_per_node:
        resources[GPU_RESOURCE] = str(spec.gpus_per_node)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "nvidia.com/gpu.present": "true" if spec.gpus_per_node else "false",
            },
        },
        "status": {"capacity": resources, "allocatable": dict(resources)},
    }


# ---------------------------------------------------------------- processes


def _start_ticks(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot, or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # reap our own child; harmless otherwise
        return None
    return int(fields[19])  # field 22 of proc(5), counted after the command name


def alive(record: ProcessRecord) -> bool:
    return _start_ticks(record.pid) == record.start_ticks


def _spawn(component: str, argv: list[str], log: Path) -> ProcessRecord:
    with log.open("ab") as out:
        # A session of its own: a terminal's Ctrl-C does not reach it, and `down`
        # can signal the whole group.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=log.parent,
        )
    ticks = _start_ticks(proc.pid)
    if ticks is None:
        raise ClusterError(f"{component} exited at once; see {log}")
    return ProcessRecord(component, proc.pid, ticks)


def _terminate(records: tuple[ProcessRecord, ...], grace_s: float = 10.0) -> None:
    """SIGTERM the process groups we started (newest first), SIGKILL what outlives the grace."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        live = [r for r in reversed(records) if alive(r)]
        for record in live:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(record.pid, sig)
        deadline = time.monotonic() + grace_s
        while live and time.monotonic() < deadline:
            live = [r for r in live if alive(r)]
            time.sleep(0.1)
        if not live:
            return


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# ---------------------------------------------------------------- HTTP to the components


def _request(
    url: str,
    token: str | None,
    ca_file: Path | None,
    method: str = "GET",
    body: dict[str, Any] | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    context: ssl.SSLContext | None = None
    if url.startswith("https"):
        if ca_file is None:  # health ports of the controller-manager and scheduler: self-signed
            context = ssl._create_unverified_context()
        else:
            context = ssl.create_default_context(cafile=str(ca_file))
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def _wait_until(
    what: str, check: Any, deadline: float, log: Path | None, record: ProcessRecord | None
) -> None:
    while time.monotonic() < deadline:
        if check():
            return
        if record is not None and not alive(record):
            raise ClusterError(
                f"{record.component} exited while starting; see {log}\n{log_tail(log)}"
            )
        time.sleep(0.1)
    raise ClusterError(
        f"timed out waiting for {what}" + (f"; see {log}\n{log_tail(log)}" if log else "")
    )


def log_tail(log: Path | None, lines: int = 30) -> str:
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


# ---------------------------------------------------------------- certificates and keys


def write_pki(pki: Path) -> None:
    """A CA, the API server's serving certificate, and the service-account key pair."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def pem_key(key: Any) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tandem-dev-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    names = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", SERVICE_IP)]
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pki.mkdir(parents=True, exist_ok=True)
    files = {
        "ca.crt": ca_cert.public_bytes(serialization.Encoding.PEM),
        "ca.key": pem_key(ca_key),
        "apiserver.crt": server_cert.public_bytes(serialization.Encoding.PEM),
        "apiserver.key": pem_key(server_key),
        "sa.key": pem_key(sa_key),
        "sa.pub": sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    for name, data in files.items():
        path = pki / name
        path.write_bytes(data)
        path.chmod(0o600)


# ---------------------------------------------------------------- lifecycle


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """One `up`/`down`/`attach` at a time per state folder, across processes."""
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    with (state_dir.parent / f".{state_dir.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def load(state_dir: Path) -> Cluster | None:
    """The cluster recorded in `state_dir`, alive or not; None when there is none."""
    try:
        raw = json.loads(Layout(state_dir).state_file.read_text())
    except (OSError, ValueError):
        return None
    paths = ("state_dir", "bin_dir", "ca_file", "kubeconfig", "user_kubeconfig")
    raw.update({k: Path(raw[k]) for k in paths})
    raw["processes"] = tuple(ProcessRecord(**p) for p in raw["processes"])
    return Cluster(**raw)


def healthy(cluster: Cluster) -> bool:
    """Every process we started still runs and the API server answers /readyz."""
    if not all(alive(p) for p in cluster.processes):
        return False
    status, _ = _request(f"{cluster.server}/readyz", cluster.admin_token, cluster.ca_file)
    return status == 200


def running(state_dir: Path) -> Cluster | None:
    cluster = load(state_dir)
    return cluster if cluster is not None and healthy(cluster) else None


def start(
    spec: ClusterSpec,
    started_by: str = "cli",
    timeout_s: float = 120.0,
    user_pid: int | None = None,
) -> Cluster:
    """Start a cluster in `spec.state_dir` unless a healthy one runs there already.

    With `user_pid`, that process is recorded as a user (see `release`) under the same lock.
    """
    with locked(spec.state_dir):
        cluster = running(spec.state_dir)
        if cluster is None:
            _stop_unlocked(spec.state_dir)  # a half-dead earlier cluster
            cluster = _start_unlocked(spec, started_by, time.monotonic() + timeout_s)
        if user_pid is not None:
            attach(spec.state_dir, user_pid)
        return cluster


def release(state_dir: Path, user_pid: int) -> bool:
    """`user_pid` is done with the cluster; stop it if a test session started it and no
    other live process uses it. A cluster started by `up` keeps running. True if stopped."""
    with locked(state_dir):
        remaining = detach(state_dir, user_pid)
        cluster = load(state_dir)
        if cluster is None or cluster.started_by == "cli" or remaining > 0:
            return False
        return _stop_unlocked(state_dir)


def _start_unlocked(spec: ClusterSpec, started_by: str, deadline: float) -> Cluster:
    stages = spec.bin_dir.parent / "kwok-stages.yaml"
    missing = [n for n in (*COMPONENTS, "kubectl", "helm") if not (spec.bin_dir / n).exists()]
    if missing or not stages.exists():
        raise ClusterError(
            f"missing in {spec.bin_dir}: {missing or [stages.name]}; run {BUILD_SCRIPT}"
        )
    layout = Layout(spec.state_dir)
    layout.logs.mkdir(parents=True, exist_ok=True)
    layout.users.mkdir(exist_ok=True)
    write_pki(layout.pki)
    ports = Ports(*free_ports(6))
    tokens = Tokens(*(secrets.token_hex(16) for _ in range(5)))
    layout.token_file.write_text(token_csv(tokens))
    if spec.audit:
        layout.audit_policy.write_text(AUDIT_POLICY)
    layout.token_file.chmod(0o600)
    server = f"https://127.0.0.1:{ports.apiserver}"
    ca_file = layout.pki / "ca.crt"
    for who, token in (
        ("admin", tokens.admin),
        ("user", tokens.user),
        ("controller-manager", tokens.controller_manager),
        ("scheduler", tokens.scheduler),
        ("kwok", tokens.kwok),
    ):
        layout.kubeconfig(who).write_text(kubeconfig_text(server, ca_file, f"tandem-{who}", token))
        layout.kubeconfig(who).chmod(0o600)
    cluster = Cluster(
        state_dir=spec.state_dir,
        bin_dir=spec.bin_dir,
        server=server,
        ca_file=ca_file,
        kubeconfig=layout.kubeconfig("admin"),
        user_kubeconfig=layout.kubeconfig("user"),
        admin_token=tokens.admin,
        user_token=tokens.user,
        processes=(),
        started_by=started_by,
        nodes=spec.nodes,
        gpus_per_node=spec.gpus_per_node,
    )
    try:
        cluster = _launch(cluster, component_args(spec, ports, layout, stages), ports, deadline)
        _create_nodes(cluster, spec, deadline)
        _wait_until(
            "the default ServiceAccount (controller-manager)",
            lambda: _get(cluster, "/api/v1/namespaces/default/serviceaccounts/default") == 200,
            deadline,
            layout.log("kube-controller-manager"),
            None,
        )
    except BaseException:
        _terminate(cluster.processes)
        raise
    return cluster


def _save(cluster: Cluster) -> None:
    raw = asdict(cluster)
    raw.update({k: str(v) for k, v in raw.items() if isinstance(v, Path)})
    state_file = Layout(cluster.state_dir).state_file
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(raw, indent=2))
    tmp.replace(state_file)


def _get(cluster: Cluster, path: str) -> int:
    return _request(f"{cluster.server}{path}", cluster.admin_token, cluster.ca_file)[0]


def _launch(cluster: Cluster, argv: dict[str, list[str]], ports: Ports, deadline: float) -> Cluster:
    layout = Layout(cluster.state_dir)
    health = {
        "etcd": lambda: (
            _request(f"http://127.0.0.1:{ports.etcd_client}/health", None, None)[0] == 200
        ),
        "kube-apiserver": lambda: _get(cluster, "/readyz") == 200,
        "kube-controller-manager": lambda: (
            _request(f"https://127.0.0.1:{ports.controller_manager}/healthz", None, None)[0] == 200
        ),
        "kube-scheduler": lambda: (
            _request(f"https://127.0.0.1:{ports.scheduler}/healthz", None, None)[0] == 200
        ),
        "kwok": lambda: True,  # judged by the nodes it makes Ready
    }
    records: list[ProcessRecord] = []
    for component in COMPONENTS:
        log = layout.log(component)
        record = _spawn(component, argv[component], log)
        records.append(record)
        # Saved after every start so that a crash half-way leaves nothing unrecorded.
        cluster = replace(cluster, processes=tuple(records))
        _save(cluster)
        _wait_until(f"{component} to become healthy", health[component], deadline, log, record)
    return cluster


def _create_nodes(cluster: Cluster, spec: ClusterSpec, deadline: float) -> None:
    for index in range(spec.nodes):
        status, body = _request(
            f"{cluster.server}/api/v1/nodes",
            cluster.admin_token,
            cluster.ca_file,
            method="POST",
            body=node_manifest(index, spec),
        )
        if status not in (201, 409):
            raise ClusterError(f"creating node {index} failed: HTTP {status} {body[:300]!r}")

    def all_ready() -> bool:
        status, body = _request(
            f"{cluster.server}/api/v1/nodes", cluster.admin_token, cluster.ca_file
        )
        if status != 200:
            return False
        ready = [
            n
            for n in json.loads(body)["items"]
            if n["metadata"]["name"].startswith(NODE_PREFIX)
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n["status"].get("conditions", [])
            )
            and not any(
                t["key"].startswith("node.kubernetes.io/") for t in n["spec"].get("taints", [])
            )
        ]
        return len(ready) >= spec.nodes

    kwok = next(p for p in cluster.processes if p.component == "kwok")
    _wait_until(
        f"{spec.nodes} simulated nodes to be Ready and untainted",
        all_ready,
        deadline,
        Layout(cluster.state_dir).log("kwok"),
        kwok,
    )


def stop(state_dir: Path) -> bool:
    """Stop the processes recorded in `state_dir` and remove it; False when there was none."""
    with locked(state_dir):
        return _stop_unlocked(state_dir)


def _stop_unlocked(state_dir: Path) -> bool:
    cluster = load(state_dir)
    if cluster is not None:
        _terminate(cluster.processes)
    if not state_dir.exists():
        return cluster is not None
    layout = Layout(state_dir)
    if any(state_dir.iterdir()) and not (layout.state_file.exists() or layout.pki.exists()):
        # Never delete a folder that this module did not fill.
        raise ClusterError(f"{state_dir} holds no cluster state; not removing it")
    shutil.rmtree(state_dir)
    return cluster is not None


def attach(state_dir: Path, pid: int) -> None:
    """Record `pid` as a user of the cluster (tests share one cluster per machine)."""
    users = Layout(state_dir).users
    users.mkdir(parents=True, exist_ok=True)
    (users / str(pid)).write_text(str(_start_ticks(pid)))


def detach(state_dir: Path, pid: int) -> int:
    """Forget `pid` as a user; returns how many live users remain."""
    users = Layout(state_dir).users
    with contextlib.suppress(FileNotFoundError):
        (users / str(pid)).unlink()
    live = 0
    for entry in users.glob("*") if users.exists() else ():
        if entry.name.isdigit() and alive(
            ProcessRecord("user", int(entry.name), _int(entry.read_text()))
        ):
            live += 1
        else:
            entry.unlink(missing_ok=True)
    return live


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return -1


# ---------------------------------------------------------------- CLI


def default_state_dir() -> Path:
    sys.path.insert(0, str(REPO))
    from tandem import env

    return env.read().home / "devcluster"


def bin_dir() -> Path:
    """Where build.sh puts the binaries (asks it; builds nothing)."""
    out = subprocess.run(
        [str(BUILD_SCRIPT), "--print-dir"], capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip())


def _cmd_up(args: argparse.Namespace) -> int:
    spec = ClusterSpec(
        bin_dir=bin_dir(),
        state_dir=args.state_dir,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
    )
    began = time.monotonic()
    cluster = start(spec, started_by="cli")
    if cluster.started_by != "cli":
        # Started by a test session: keep it when that session ends.
        cluster = replace(cluster, started_by="cli")
        with locked(spec.state_dir):
            _save(cluster)
    print(
        f"# control plane ready in {time.monotonic() - began:.1f} s; logs in {cluster.log_dir}",
        file=sys.stderr,
    )
    if (cluster.nodes, cluster.gpus_per_node) != (spec.nodes, spec.gpus_per_node):
        print(
            f"# note: reusing the running cluster ({cluster.nodes} nodes x "
            f"{cluster.gpus_per_node} GPUs); `down` first to change its size",
            file=sys.stderr,
        )
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    cluster = load(args.state_dir)
    if cluster is None:
        print(f"no cluster in {args.state_dir}")
        return 1
    print(
        f"server {cluster.server}  kubeconfig {cluster.kubeconfig}  started by {cluster.started_by}"
    )
    for p in cluster.processes:
        print(f"  {p.component:<24} pid {p.pid:<8} {'running' if alive(p) else 'STOPPED'}")
    ok = healthy(cluster)
    print("healthy" if ok else "NOT healthy")
    return 0 if ok else 1


def _cmd_down(args: argparse.Namespace) -> int:
    with locked(args.state_dir):
        users = detach(args.state_dir, 0) if args.state_dir.exists() else 0  # pid 0: count only
        if users and not args.force:
            print(
                f"{users} running test session(s) use this cluster; `down --force` stops it anyway"
            )
            return 1
        stopped = _stop_unlocked(args.state_dir)
    print("stopped" if stopped else f"no cluster in {args.state_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devcluster", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--state-dir", type=Path, default=None, help="default: $TANDEM_HOME/devcluster"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the cluster unless it runs; print export KUBECONFIG=...")
    up.add_argument("--nodes", type=int, default=4)
    up.add_argument("--gpus-per-node", type=int, default=8)
    up.set_defaults(func=_cmd_up)
    sub.add_parser("status", help="show the processes and health").set_defaults(func=_cmd_status)
    down = sub.add_parser("down", help="stop what `up` started and remove the state")
    down.add_argument("--force", action="store_true", help="even while test sessions use it")
    down.set_defaults(func=_cmd_down)
    args = parser.parse_args(argv)
    args.state_dir = (args.state_dir or default_state_dir()).resolve()
    try:
        return int(args.func(args))
    except (ClusterError, ValueError, subprocess.CalledProcessError) as err:
        print(f"devcluster: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
