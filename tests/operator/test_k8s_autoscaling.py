"""Autoscaling on the local control plane, driven by real workers and a real router.

kwok runs no containers, so the pool's pods are stand-ins: the test starts real
`tandem worker` processes (tiny model, CPU) and a real `tandem router`, and binds
each pod to one of them through the operator's `--pod-addresses` file, the
documented way to reach pods whose IPs the operator cannot reach. The signals
come from those processes' /metrics, and the operator's Drain and SetRole calls
reach them too; load is real requests through the router.

Processes: one worker per fixed pod (prefill, decode), two spares for flexible
pods (they start drained, i.e. outside the pool until the operator gives them a
role), all with 512 KV blocks, and a router over all four (it skips draining
workers and learns each worker's role from its Load answers, as it does from
EndpointSlices in a cluster).

The tests run in file order on one pool, as the operator would meet it:
idle -> limited by maxGPUs -> scale-up -> scale-down with a stream in flight ->
a flip with the operator killed mid-flip -> a /metrics source down -> a Prometheus
source down.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests

from tandem.models.tiny import ensure_tiny_model
from tandem.rpc.v1 import worker_pb2 as pb
from tandem.rpc.v1 import worker_pb2_grpc as pb_grpc
from tests.devcluster_plugin import DevCluster
from tests.operator.kube_harness import OperatorProcess, condition, get_json, wait_for
from tests.router.processes import RouterProc, Worker, free_port, stopping

pytestmark = pytest.mark.k8s

POOL = "auto"
BLOCKS = 512  # KV blocks of every worker (16 tokens each)
WITHIN = 60.0  # seconds for any one step of the loop to show (passes run every second)


def pool_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "tandem.dev/v1alpha1",
        "kind": "InferencePool",
        "metadata": {"name": POOL},
        "spec": {
            "model": {"name": "tiny", "uri": "hostPath:///tmp/tandem-models"},
            "prefill": {"replicas": 1, "minReplicas": 1, "maxReplicas": 2},
            "decode": {"replicas": 1, "minReplicas": 1, "maxReplicas": 2},
            "autoscaling": {
                "enabled": True,
                "maxGPUs": 2,
                "roleSwitching": True,
                # Targets the real processes' figures sit clearly on either side of. Decode:
                # 25% of 512 blocks is 128; the decode load (16 streams out of step) holds
                # ~200 blocks in all (one worker: asks 2; two: still 2), one 2,000-token
                # stream at most 126 (asks 1). Prefill: any steady prompt load is >10% busy.
                "targetKVUsagePercent": 25,
                "targetBusyPercent": 10,
                "scaleUpWindow": "0s",
                "scaleDownWindow": "3s",
                "cooldown": "2s",
                "metrics": {"interval": "1s"},
            },
        },
    }


# ----- processes ---------------------------------------------------------------


def metric(worker: Worker, prefix: str) -> float:
    return worker.metric(prefix)


def drain(worker: Worker) -> None:
    with grpc.insecure_channel(worker.address) as ch:
        pb_grpc.WorkerServiceStub(ch).Drain(pb.DrainRequest(), timeout=30)


@dataclass
class Stream:
    """One long generation straight on a worker (so the test knows where it runs)."""

    worker: Worker
    tokens: int
    got: int = 0
    finish: str = ""
    error: str = ""
    ended_at: float = 0.0
    thread: threading.Thread | None = None

    def start(self) -> Stream:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.got > 0 or self.error, 30, "the stream's first tokens")
        return self

    def _run(self) -> None:
        sampling = pb.SamplingParams(max_tokens=self.tokens, ignore_eos=True)
        request = pb.GenerateRequest(request_id=f"long-{uuid.uuid4().hex[:6]}",
                                     prompt_token_ids=list(range(10, 26)), sampling=sampling)  # fmt: skip
        try:
            with grpc.insecure_channel(self.worker.address) as ch:
                for chunk in pb_grpc.WorkerServiceStub(ch).Generate(request, timeout=180):
                    self.got += len(chunk.token_ids)
                    if chunk.finished:
                        self.finish = chunk.finish_reason
        except grpc.RpcError as exc:
            self.error = f"{exc.code().name}: {exc.details()}"
        self.ended_at = time.monotonic()

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(180)


class Load:
    """Requests in a loop through the router from a few threads; failures are kept."""

    def __init__(
        self, url: str, prompt_len: int, max_tokens: int, threads: int, spread: int = 0
    ) -> None:
        self.url, self.prompt_len, self.max_tokens, self.n = url, prompt_len, max_tokens, threads
        self.spread = spread  # thread i asks for max_tokens + i * spread: streams out of step
        self.stop_flag = threading.Event()
        self.threads: list[threading.Thread] = []
        self.done = 0
        self.failures: list[str] = []

    def start(self) -> Load:
        self.stop_flag.clear()
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True)
                        for i in range(self.n)]  # fmt: skip
        for t in self.threads:
            t.start()
        return self

    def _loop(self, i: int) -> None:
        k = 0
        while not self.stop_flag.is_set():
            prompt = [(i * 131 + k * 17 + j * 7) % 900 + 20 for j in range(self.prompt_len)]
            body = {"prompt": prompt, "max_tokens": self.max_tokens + i * self.spread,
                    "temperature": 0, "ignore_eos": True}  # fmt: skip
            try:
                r = requests.post(f"{self.url}/v1/completions", json=body, timeout=120)
                if r.status_code == 200:
                    self.done += 1
                else:
                    self.failures.append(f"HTTP {r.status_code}: {r.text[:200]}")
            except requests.RequestException as exc:
                self.failures.append(repr(exc))
            k += 1

    def stop(self, wait: bool = True) -> None:
        """No new requests; with `wait`, also until those in flight have finished."""
        self.stop_flag.set()
        if wait:
            self.join()

    def join(self) -> None:
        for t in self.threads:
            t.join(120)


@dataclass
class Binder:
    """Keeps the --pod-addresses file in step with the pool's pods: fixed pods to their
    workers, the router pod to the router, each new flexible pod to a free spare."""

    cluster: DevCluster
    namespace: str
    path: Path
    fixed: dict[str, Worker]
    spares: list[Worker]
    router: RouterProc
    bound: dict[str, Worker | RouterProc] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)  # pods whose /metrics point nowhere
    stop_flag: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Binder:
        from kubernetes import client
        from kubernetes import config as k8s_config

        self.api = client.CoreV1Api(k8s_config.new_client_from_config(str(self.cluster.kubeconfig)))
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def _loop(self) -> None:
        while not self.stop_flag.wait(0.2):
            try:
                pods = self.api.list_namespaced_pod(
                    self.namespace, label_selector=f"tandem.dev/pool={POOL}"
                ).items
            except Exception:  # the API server is busy; try again on the next round
                continue
            self._bind(pods)

    def _bind(self, pods: list[Any]) -> None:
        names = {p.metadata.name for p in pods}
        self.bound = {n: t for n, t in self.bound.items() if n in names}
        for p in pods:
            name, labels = p.metadata.name, p.metadata.labels or {}
            if name in self.bound:
                continue
            if labels.get("tandem.dev/role") == "router":
                self.bound[name] = self.router
            elif labels.get("tandem.dev/flexible") == "true":
                free = [w for w in self.spares if w not in self.bound.values()]
                if free:
                    self.bound[name] = free[0]
            elif labels.get("tandem.dev/role") in self.fixed:
                self.bound[name] = self.fixed[labels["tandem.dev/role"]]
        self._write()

    def _write(self) -> None:
        doc: dict[str, dict[str, str]] = {}
        for name, target in self.bound.items():
            key = f"{self.namespace}/{name}"
            if isinstance(target, RouterProc):
                doc[key] = {"metrics": f"{target.url}/metrics"}
            else:
                doc[key] = {"grpc": target.address,
                            "metrics": f"http://127.0.0.1:{target.metrics_port}/metrics"}  # fmt: skip
            if name in self.broken:
                doc[key]["metrics"] = f"http://127.0.0.1:{DEAD_PORT}/metrics"
        text = json.dumps(doc, sort_keys=True)
        if not self.path.exists() or self.path.read_text() != text:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.path)

    def pod_of(self, worker: Worker) -> str | None:
        return next((n for n, t in self.bound.items() if t is worker), None)

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(5)


DEAD_PORT = free_port()  # nothing listens here


@dataclass
class Rig:
    cluster: DevCluster
    namespace: str
    operator: OperatorProcess
    binder: Binder
    prefill: Worker
    decode: Worker
    spares: list[Worker]
    router: RouterProc
    metrics_port: int
    decode_load: Load
    prefill_load: Load

    def pool(self) -> dict[str, Any]:
        got: dict[str, Any] = get_json(self.cluster, "inferencepools.tandem.dev", POOL,
                                       "-n", self.namespace)  # fmt: skip
        return got

    def pods(self) -> list[dict[str, Any]]:
        listing = get_json(
            self.cluster, "pods", "-n", self.namespace, "-l", f"tandem.dev/pool={POOL}"
        )
        return [p for p in listing["items"] if not p["metadata"].get("deletionTimestamp")]

    def flexible(self) -> list[dict[str, Any]]:
        return [
            p for p in self.pods() if p["metadata"]["labels"].get("tandem.dev/flexible") == "true"
        ]

    def replicas(self, name: str) -> int:
        got = get_json(self.cluster, "deployment", f"{POOL}-{name}", "-n", self.namespace)
        return int(got["spec"]["replicas"])

    def last(self) -> dict[str, Any]:
        return dict((self.pool().get("status") or {}).get("lastScaling") or {})

    def operator_metric(self, prefix: str) -> float:
        text = requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(prefix))  # fmt: skip

    def events(self) -> set[str]:
        items = get_json(self.cluster, "events", "-n", self.namespace,
                         "--field-selector", f"involvedObject.name={POOL}")["items"]  # fmt: skip
        return {e["reason"] for e in items}

    def spare_of(self, pod: str) -> Worker:
        target = self.binder.bound.get(pod)
        assert isinstance(target, Worker), f"pod {pod} is bound to {target}"
        return target


def _serving_flexible(rig: Rig, role: str) -> tuple[str, Worker] | None:
    """The one flexible pod, once it is labelled `role`, done flipping, and its worker
    serves that role (not draining)."""
    pods = rig.flexible()
    if len(pods) != 1:
        return None
    meta = pods[0]["metadata"]
    if meta["labels"].get("tandem.dev/role") != role or "tandem.dev/flip-to" in (
        meta.get("annotations") or {}
    ):
        return None
    worker = rig.binder.bound.get(meta["name"])
    if not isinstance(worker, Worker):
        return None
    serving = metric(worker, f'tandem_worker_role{{role="{role}"}}') == 1
    return (
        (meta["name"], worker)
        if serving and metric(worker, "tandem_worker_draining") == 0
        else None
    )


@pytest.fixture(scope="module")
def rig(
    dev_cluster: DevCluster,
    crd: None,
    operator_identity: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Rig]:
    model = ensure_tiny_model()
    logs = tmp_path_factory.mktemp("autoscaling")
    prefill, decode = Worker(model, "prefill", logs, BLOCKS), Worker(model, "decode", logs, BLOCKS)
    spares = [Worker(model, "decode", logs, BLOCKS) for _ in range(2)]
    ns = f"as-{uuid.uuid4().hex[:8]}"
    dev_cluster.kubectl("create", "namespace", ns)
    with stopping(prefill, decode, *spares):
        for w in (prefill, decode, *spares):
            w.wait()
        for w in spares:
            drain(w)  # outside the pool until the operator gives it a role
        router = RouterProc([prefill, decode, *spares], model, logs, "--min-prompt-tokens", "32")
        with stopping(router):
            router.wait()
            addresses = logs / "pod-addresses.json"
            binder = Binder(dev_cluster, ns, addresses, {"prefill": prefill, "decode": decode},
                            spares, router).start()  # fmt: skip
            port = free_port()
            extra = ["--pod-addresses", str(addresses), "--metrics-port", str(port)]
            operator = OperatorProcess(
                dev_cluster, operator_identity, ns, logs / "operator.log", extra
            )
            operator.start()
            yield Rig(dev_cluster, ns, operator, binder, prefill, decode, spares, router, port,
                      decode_load=Load(router.url, 16, 200, 16, spread=25),
                      prefill_load=Load(router.url, 200, 1, 3))  # fmt: skip
            operator.stop()
            binder.stop()
    dev_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_pool_comes_up_in_the_autoscaled_layout_and_idles(rig: Rig) -> None:
    rig.cluster.kubectl("apply", "-n", rig.namespace, "-f", "-", input=json.dumps(pool_manifest()))

    def ready() -> bool:
        pool = rig.pool()
        status = pool.get("status") or {}
        return condition(pool, "Ready").get("status") == "True" and all(
            (status.get(r) or {}).get("ready") == "1/1" for r in ("prefill", "decode", "router")
        )

    wait_for(ready, WITHIN, "the pool to be Ready, 1/1 per role", rig.operator.tail)
    assert (rig.replicas("prefill"), rig.replicas("decode"), rig.replicas("flexible")) == (1, 1, 0)
    # The loop runs on the real, idle signals: it decides, and the decision is "nothing".
    wait_for(lambda: condition(rig.pool(), "ScalingLimited").get("reason") == "WithinBounds",
             WITHIN, "the scaling loop's first decision", rig.operator.tail)  # fmt: skip
    wait_for(lambda: rig.operator_metric('tandem_planner_decisions_total{action="none"'), WITHIN,
             "a decision with action none", rig.operator.tail)  # fmt: skip
    assert rig.last() == {}


def test_decode_load_beyond_the_gpu_budget_sets_scaling_limited(rig: Rig) -> None:
    rig.decode_load.start()
    limited = wait_for(
        lambda: (c := condition(rig.pool(), "ScalingLimited")).get("status") == "True" and c,
        WITHIN, "ScalingLimited=True", rig.operator.tail,
    )  # fmt: skip
    assert limited["reason"] == "MaxGPUs" and "maxGPUs=2 binds" in limited["message"]
    assert rig.replicas("flexible") == 0 and rig.last() == {}
    assert "MaxGPUs" in rig.events()


def test_a_larger_budget_scales_decode_up_with_a_flexible_worker(rig: Rig) -> None:
    patch = {"spec": {"autoscaling": {"maxGPUs": 3}}}
    rig.cluster.kubectl("patch", "inferencepool.tandem.dev", POOL, "-n", rig.namespace,
                        "--type=merge", "-p", json.dumps(patch))  # fmt: skip
    wait_for(
        lambda: rig.last().get("decode") == 2, WITHIN, "lastScaling decode=2", rig.operator.tail
    )
    assert rig.last()["prefill"] == 1 and rig.last()["action"] == "scale"
    assert rig.replicas("flexible") == 1 and rig.replicas("decode") == 1
    _, worker = wait_for(lambda: _serving_flexible(rig, "decode"), WITHIN,
                            "a flexible pod serving decode", rig.operator.tail)  # fmt: skip
    before = metric(worker, 'tandem_worker_tokens_total{phase="decode"}')
    wait_for(lambda: metric(worker, 'tandem_worker_tokens_total{phase="decode"}') > before, WITHIN,
             "the router to send the new decode worker work")  # fmt: skip
    wait_for(lambda: (rig.pool()["status"].get("decode") or {}).get("ready") == "2/2", WITHIN,
             "status decode 2/2 (counted by the pods' role labels)")  # fmt: skip
    assert {"Scaled", "WorkerAssigned"} <= rig.events()


def test_scale_down_drains_the_flexible_worker_before_deleting_it(rig: Rig) -> None:
    ((name, worker),) = [wait_for(lambda: _serving_flexible(rig, "decode"), 5, "flexible decode")]
    stream = Stream(worker, 2000).start()
    rig.decode_load.stop()
    assert rig.decode_load.failures == [] and rig.decode_load.done > 0
    seen: list[tuple[bool, bool, str | None]] = []  # (stream running, pod exists, its mark)

    def watch() -> bool:
        pods = {p["metadata"]["name"]: p for p in rig.pods()}
        mark = ((pods.get(name) or {}).get("metadata", {}).get("annotations") or {}).get(
            "tandem.dev/scale-down"
        )
        seen.append((stream.running, name in pods, mark))
        return name not in pods and not stream.running

    wait_for(watch, 120, f"pod {name} to be deleted after its stream", rig.operator.tail)
    stream.join()
    assert (stream.got, stream.finish, stream.error) == (2000, "length", "")
    assert all(exists for running, exists, _ in seen if running), "deleted during its stream"
    assert any(running and mark == "drain" for running, _, mark in seen), "no drain seen"
    assert rig.last()["decode"] == 1 and rig.replicas("flexible") == 0
    assert metric(worker, "tandem_worker_draining") == 1  # drained, out of the pool
    assert "WorkerRemoved" in rig.events()


def test_a_flip_survives_an_operator_kill_mid_flip(rig: Rig) -> None:
    # A longer cooldown orders the moves: after decode grows again, nothing changes for
    # 8s, time for decode demand to go and prefill demand to come; then the planner flips
    # the idle flexible decode worker instead of removing it.
    patch = {"spec": {"autoscaling": {"cooldown": "8s"}}}
    rig.cluster.kubectl("patch", "inferencepool.tandem.dev", POOL, "-n", rig.namespace,
                        "--type=merge", "-p", json.dumps(patch))  # fmt: skip
    rig.decode_load.start()
    name, worker = wait_for(lambda: _serving_flexible(rig, "decode"), WITHIN * 2,
                            "decode to grow again", rig.operator.tail)  # fmt: skip
    switches = metric(worker, 'tandem_worker_role_switches_total{to_role="prefill"}')
    rig.decode_load.stop(wait=False)
    stream = Stream(worker, 2000).start()  # the flip's drain has to wait for this one
    rig.prefill_load.start()

    def notes() -> dict[str, str]:
        pod = next((p for p in rig.pods() if p["metadata"]["name"] == name), None)
        return dict((pod or {}).get("metadata", {}).get("annotations") or {})

    wait_for(lambda: notes().get("tandem.dev/flip-to") == "prefill", WITHIN,
             f"pod {name} to be marked for a flip to prefill", rig.operator.tail)  # fmt: skip
    # Prompts pause while the drain begins: a prompt the router sends to a worker just as
    # its drain begins is refused and routed again under the same request id, and the
    # refused attempt's late Cancel can abort the retry on the prefill worker (a router
    # race this test does not exercise). Once the router's Load polls (every 0.5 s) see
    # the worker draining, prompts resume and keep prefill demand up through the flip.
    rig.prefill_load.stop(wait=False)
    wait_for(lambda: metric(worker, "tandem_worker_draining") == 1, WITHIN,
             f"the operator to drain {name}", rig.operator.tail)  # fmt: skip
    assert stream.running  # the flip waits on this stream: the kill lands mid-flip
    rig.operator.kill()
    time.sleep(1.5)
    rig.prefill_load.join()
    rig.prefill_load.start()
    rig.operator.start()
    wait_for(lambda: _serving_flexible(rig, "prefill"), WITHIN * 2, "the flip to finish",
             rig.operator.tail)  # fmt: skip
    stream.join()
    assert (stream.got, stream.finish, stream.error) == (2000, "length", "")
    assert [p["metadata"]["name"] for p in rig.flexible()] == [name]  # no doubled worker
    assert len(rig.pods()) == 4 and rig.replicas("flexible") == 1
    assert metric(worker, 'tandem_worker_role_switches_total{to_role="prefill"}') == switches + 1
    assert (rig.last()["prefill"], rig.last()["decode"], rig.last()["action"]) == (2, 1, "flip")
    assert rig.operator_metric('tandem_operator_role_switches_total{namespace="') == 1
    rig.prefill_load.stop()
    rig.decode_load.join()
    assert rig.prefill_load.failures == [] and rig.prefill_load.done > 0
    assert rig.decode_load.failures == []


def test_a_signal_source_down_degrades_the_pool_and_decides_nothing(rig: Rig) -> None:
    fixed = rig.binder.pod_of(rig.decode)
    assert fixed is not None
    rig.binder.broken.add(fixed)
    degraded = wait_for(lambda: (c := condition(rig.pool(), "Degraded")).get("status") == "True" and c,
                        WITHIN, "Degraded=True", rig.operator.tail)  # fmt: skip
    assert degraded["reason"] == "SignalsUnavailable" and fixed in degraded["message"]
    last = rig.last()
    counted = rig.operator_metric('tandem_planner_decisions_total{action="degraded"')
    wait_for(lambda: rig.operator_metric('tandem_planner_decisions_total{action="degraded"') >= counted + 3,
             WITHIN, "three more passes")  # fmt: skip
    assert rig.last() == last  # no decision while a source is down
    rig.binder.broken.discard(fixed)
    wait_for(lambda: condition(rig.pool(), "Degraded").get("status") == "False", WITHIN,
             "Degraded to clear", rig.operator.tail)  # fmt: skip


def test_a_prometheus_source_that_is_down_degrades_the_pool(rig: Rig) -> None:
    url = f"http://127.0.0.1:{DEAD_PORT}"
    source = {"source": "prometheus", "interval": "1s", "prometheus": {"url": url}}
    patch = {"spec": {"autoscaling": {"metrics": source}}}
    rig.cluster.kubectl("patch", "inferencepool.tandem.dev", POOL, "-n", rig.namespace,
                        "--type=merge", "-p", json.dumps(patch))  # fmt: skip
    degraded = wait_for(lambda: (c := condition(rig.pool(), "Degraded")).get("status") == "True" and c,
                        WITHIN, "Degraded=True from Prometheus", rig.operator.tail)  # fmt: skip
    assert degraded["reason"] == "SignalsUnavailable" and f"prometheus {url}" in degraded["message"]
    last = rig.last()
    counted = rig.operator_metric('tandem_planner_decisions_total{action="degraded"')
    wait_for(lambda: rig.operator_metric('tandem_planner_decisions_total{action="degraded"') >= counted + 2,
             WITHIN, "two more passes")  # fmt: skip
    assert rig.last() == last
    patch = {"spec": {"autoscaling": {"metrics": {"source": "scrape", "prometheus": None}}}}
    rig.cluster.kubectl("patch", "inferencepool.tandem.dev", POOL, "-n", rig.namespace,
                        "--type=merge", "-p", json.dumps(patch))  # fmt: skip
    wait_for(lambda: condition(rig.pool(), "Degraded").get("status") == "False", WITHIN,
             "Degraded to clear with the scrape source back", rig.operator.tail)  # fmt: skip


def test_operator_process_survived(rig: Rig) -> None:
    assert rig.operator.proc is not None and rig.operator.proc.poll() is None, rig.operator.tail()
    assert "Traceback" not in rig.operator.log.read_text(), rig.operator.tail(200)
