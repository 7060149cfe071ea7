"""Control-plane scale: the operator managing many pools on a large simulated GPU fleet.

Starts a local control plane of its own (hack/devcluster.py: real etcd, kube-apiserver,
controller-manager and scheduler; kwok simulating `--nodes` GPU nodes) with an audit log of
every request from clients other than the cluster's own components, and one `tandem
operator` over all namespaces. Then, measured:

1. create: `--pools` InferencePools at once (spread over `--namespaces`); time from the
   create to each pool's Ready=True (render, apply, scheduling of every pod onto the GPU
   nodes, kwok starting them, the operator seeing them ready);
2. change: every pool's decode replicas changed at once; time until each pool's status
   reports the new generation and Ready again;
3. idle: nothing changes for `--idle` seconds (watches and periodic resyncs only).

Reported: per-phase p50/p99 of those times, the operator's own reconcile-duration histogram
(tandem_operator_reconcile_seconds, p50/p99), API requests per second made by the operator
(counted in the audit log by its user agent: kopf and the Python client; the benchmark's own
kubectl calls are excluded), and the operator's resident memory (peak and at the end).

    python3 bench/operator_scale.py --nodes 1000 --pools 100 --out bench/results/operator-scale.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tandem.planner.scrape import parse, quantile  # noqa: E402


def _devcluster() -> ModuleType:
    spec = importlib.util.spec_from_file_location("devcluster", REPO / "hack" / "devcluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["devcluster"] = module
    spec.loader.exec_module(module)
    return module


devcluster = _devcluster()


def pool_manifest(name: str, namespace: str, decode: int) -> dict[str, Any]:
    return {
        "apiVersion": "tandem.dev/v1alpha1",
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"name": "llama3-8b", "uri": "hostPath:///models/llama3-8b"},
            "router": {"replicas": 1},
            "prefill": {"replicas": 2, "minReplicas": 1, "maxReplicas": 8, "gpusPerReplica": 1},
            "decode": {"replicas": decode, "minReplicas": 1, "maxReplicas": 8, "gpusPerReplica": 1},
        },
    }


class Kubectl:
    def __init__(self, cluster: Any) -> None:
        self.bin = str(cluster.bin_dir / "kubectl")
        self.env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}

    def __call__(self, *args: str, input: str | None = None) -> str:
        done = subprocess.run(
            [self.bin, *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=300,
        )
        if done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args[:3])}: {done.stderr[-2000:]}")
        return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RssSampler(threading.Thread):
    """The operator's resident memory once a second (from /proc)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.stop = pid, threading.Event()
        self.samples: list[float] = []

    def run(self) -> None:
        while not self.stop.wait(1.0):
            try:
                text = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            kb = next(
                int(line.split()[1]) for line in text.splitlines() if line.startswith("VmRSS")
            )
            self.samples.append(kb / 1024)


def ready_times(kubectl: Kubectl, names: set[tuple[str, str]], since: float, generation: dict[tuple[str, str], int] | None,
                timeout_s: float) -> dict[tuple[str, str], float]:  # fmt: skip
    """Poll until every pool is Ready (at `generation` when given); seconds since `since`."""
    done: dict[tuple[str, str], float] = {}
    deadline = time.monotonic() + timeout_s
    while len(done) < len(names) and time.monotonic() < deadline:
        items = json.loads(kubectl("get", "inferencepools.tandem.dev", "-A", "-o", "json"))["items"]
        now = time.monotonic()
        for item in items:
            key = (item["metadata"]["namespace"], item["metadata"]["name"])
            if key not in names or key in done:
                continue
            status = item.get("status") or {}
            if generation is not None and status.get("observedGeneration") != generation[key]:
                continue
            ready = next(
                (c for c in status.get("conditions") or () if c.get("type") == "Ready"), None
            )
            if ready and ready.get("status") == "True":
                done[key] = now - since
        time.sleep(1.0)
    return done


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, round(q / 100 * (len(v) - 1)))]


def audit_counts(log: Path, start_wall: float, end_wall: float) -> dict[str, Any]:
    """Requests of the operator (user agent kopf or the Python client) between two wall times."""
    per_second: Counter[int] = Counter()
    verbs: Counter[str] = Counter()
    total = 0
    with log.open() as f:
        for line in f:
            event = json.loads(line)
            agent = event.get("userAgent", "")
            if agent.startswith("kubectl") or not (
                agent.startswith("kopf")
                or "OpenAPI-Generator" in agent
                or "python" in agent.lower()
            ):
                continue
            t = _wall(event.get("requestReceivedTimestamp", ""))
            if not start_wall <= t <= end_wall:
                continue
            total += 1
            per_second[int(t)] += 1
            verbs[event.get("verb", "?")] += 1
    seconds = max(1e-9, end_wall - start_wall)
    return {
        "requests": total,
        "per_second_mean": total / seconds,
        "per_second_peak": max(per_second.values(), default=0),
        "by_verb": dict(verbs.most_common()),
    }


def _wall(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else 0.0


def reconcile_quantiles(url: str) -> dict[str, float | None]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    snap = parse(text)
    after = snap.buckets("tandem_operator_reconcile_seconds")
    count = snap.total("tandem_operator_reconcile_seconds_count")
    top = max((b for b in after if b != float("inf")), default=0.0)
    total = after.get(float("inf"), 0.0)
    return {
        "p50_s": quantile(0.5, {}, after),
        "p99_s": quantile(0.99, {}, after),
        # A quantile equal to the top finite bucket only says "at least that long".
        "top_bucket_s": top,
        "share_above_top_bucket": (total - after.get(top, 0.0)) / total if total else 0.0,
        "reconciles": count,
    }


def summary(times: dict[Any, float], expected: int) -> dict[str, Any]:
    values = list(times.values())
    return {"pools": expected, "ready": len(values), "p50_s": pct(values, 50), "p99_s": pct(values, 99),
            "max_s": max(values, default=None), "mean_s": statistics.fmean(values) if values else None}  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    spec = devcluster.ClusterSpec(
        bin_dir=devcluster.bin_dir(), state_dir=Path(args.state_dir), nodes=args.nodes,
        gpus_per_node=args.gpus_per_node, audit=True,
    )  # fmt: skip
    began = time.monotonic()
    cluster = devcluster.start(spec, started_by="bench", timeout_s=900)
    up_s = time.monotonic() - began
    kubectl = Kubectl(cluster)
    operator = None
    try:
        kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            str(REPO / "crds" / "inferencepools.tandem.dev.yaml"),
        )
        kubectl(
            "wait", "--for=condition=Established", "crd/inferencepools.tandem.dev", "--timeout=60s"
        )
        namespaces = [f"scale-{i}" for i in range(args.namespaces)]
        for ns in namespaces:
            kubectl("create", "namespace", ns)
        port = free_port()
        log = (Path(args.state_dir) / "operator.log").open("wb")  # closed with the process
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "TANDEM_LOG_LEVEL": "WARNING",
               "PYTHONPATH": str(REPO)}  # fmt: skip
        operator = subprocess.Popen(
            [sys.executable, "-m", "tandem.cli", "operator", "--kubeconfig", str(cluster.kubeconfig),
             "--metrics-port", str(port), "--default-image", "tandem:scale"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )  # fmt: skip
        rss = RssSampler(operator.pid)
        rss.start()
        time.sleep(5)  # the operator's start-up (kopf scanning), outside the measured phases
        pools = [(namespaces[i % len(namespaces)], f"pool-{i}") for i in range(args.pools)]
        names = set(pools)
        docs = "\n---\n".join(json.dumps(pool_manifest(n, ns, 4)) for ns, n in pools)
        wall0, t0 = time.time(), time.monotonic()
        kubectl("apply", "-f", "-", input=docs)
        created = ready_times(kubectl, names, t0, None, args.timeout)
        wall1 = time.time()
        gens = {}
        for item in json.loads(kubectl("get", "inferencepools.tandem.dev", "-A", "-o", "json"))[
            "items"
        ]:
            gens[(item["metadata"]["namespace"], item["metadata"]["name"])] = (
                item["metadata"]["generation"] + 1
            )
        docs = "\n---\n".join(json.dumps(pool_manifest(n, ns, 5)) for ns, n in pools)
        t1 = time.monotonic()
        kubectl("apply", "-f", "-", input=docs)
        changed = ready_times(kubectl, names, t1, gens, args.timeout)
        wall2 = time.time()
        time.sleep(args.idle)
        wall3 = time.time()
        reconcile = reconcile_quantiles(f"http://127.0.0.1:{port}/metrics")
        rss.stop.set()
        pods = json.loads(kubectl("get", "pods", "-A", "-l", "tandem.dev/pool", "-o", "json"))[
            "items"
        ]
        audit = devcluster.Layout(Path(args.state_dir)).audit_log
        return {
            "benchmark": "operator_scale",
            "command": " ".join(sys.argv),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "cluster": {"nodes": args.nodes, "gpus_per_node": args.gpus_per_node, "start_s": up_s,
                        "kubernetes": devcluster_version()},
            "pools": args.pools, "namespaces": args.namespaces,
            "pods": len(pods), "pods_running": sum(p.get("status", {}).get("phase") == "Running" for p in pods),
            "create": summary(created, len(names)),
            "change": summary(changed, len(names)),
            "operator_reconcile_seconds": reconcile,
            "api_requests": {
                "create": audit_counts(audit, wall0, wall1),
                "change": audit_counts(audit, wall1, wall2),
                "idle": audit_counts(audit, wall2, wall3),
            },
            "operator_rss_mib": {"peak": max(rss.samples, default=None), "end": rss.samples[-1] if rss.samples else None},
        }  # fmt: skip
    finally:
        if operator is not None and operator.poll() is None:
            operator.send_signal(signal.SIGTERM)
            try:
                operator.wait(20)
            except subprocess.TimeoutExpired:
                operator.kill()
        if not args.keep:
            devcluster.stop(Path(args.state_dir))


def devcluster_version() -> str:
    env_file = REPO / "hack" / "kube-local" / "versions.env"
    for line in env_file.read_text().splitlines():
        if line.startswith("KUBERNETES_VERSION="):
            return line.split("=", 1)[1].strip().strip('"')
    return "?"


def table(r: dict[str, Any]) -> str:
    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.2f}"

    rows = [
        f"{r['pools']} pools, {r['pods']} pods ({r['pods_running']} running) on {r['cluster']['nodes']} nodes "
        f"x {r['cluster']['gpus_per_node']} GPUs",
        f"{'phase':<8} {'ready':>9} {'p50 s':>7} {'p99 s':>7} {'max s':>7} {'API req/s':>10} {'peak/s':>7}",
    ]
    for phase in ("create", "change"):
        s, a = r[phase], r["api_requests"][phase]
        rows.append(f"{phase:<8} {s['ready']:>4}/{s['pools']:<4} {f(s['p50_s']):>7} {f(s['p99_s']):>7} "
                    f"{f(s['max_s']):>7} {a['per_second_mean']:>10.1f} {a['per_second_peak']:>7}")  # fmt: skip
    idle = r["api_requests"]["idle"]
    rec = r["operator_reconcile_seconds"]
    rows += [
        f"idle: {idle['per_second_mean']:.2f} API requests/s",
        f"operator reconcile: p50 {f(rec['p50_s'])} s, p99 {f(rec['p99_s'])} s over {rec['reconciles']:.0f} reconciles",
        f"operator RSS: peak {f(r['operator_rss_mib']['peak'])} MiB, end {f(r['operator_rss_mib']['end'])} MiB",
    ]
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--pools", type=int, default=100)
    p.add_argument("--namespaces", type=int, default=10)
    p.add_argument("--idle", type=float, default=60.0, help="seconds of the idle phase")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per phase")
    p.add_argument("--state-dir", default=str(Path.home() / ".cache" / "tandem" / "scale-cluster"))
    p.add_argument("--keep", action="store_true", help="leave the cluster running")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "operator-scale.json"))
    args = p.parse_args()
    result = run(args)
    print(table(result))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
