"""Where the operator reaches a pool's pods: their gRPC and /metrics addresses.

By default a pod is reached at its pod IP on the ports the operator gives it
(workers: gRPC 50051, /metrics on 9090; routers: /metrics on 8000). Where the
operator cannot reach pod IPs (an operator run outside the cluster through
port-forwards, or a simulated dev cluster whose pod IPs are not real), the
`--pod-addresses FILE` flag names a JSON file of overrides, keyed by
`<namespace>/<pod>`:

    {"serving/p-flexible-7d9f-x2k": {"grpc": "127.0.0.1:50061",
                                     "metrics": "http://127.0.0.1:9161/metrics"}}

The file is read again whenever it changes, so entries for new pods may be added
while the operator runs; a pod without an entry is reached at its pod IP.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tandem.operator.objects import METRICS_PORT, ROUTER_PORT, WORKER_PORT, Manifest


class AddressFileError(ValueError):
    """The --pod-addresses file is not what it should be; the message says where."""


@dataclass(frozen=True)
class PodAddress:
    grpc: str | None  # host:port of WorkerService (None: not a worker, or no IP yet)
    metrics: str | None  # URL of its /metrics


def parse_overrides(text: str, source: str = "--pod-addresses") -> dict[str, PodAddress]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise AddressFileError(f"{source}: not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise AddressFileError(f"{source}: expected an object keyed by <namespace>/<pod>")
    out: dict[str, PodAddress] = {}
    for key, entry in doc.items():
        if key.count("/") != 1 or not isinstance(entry, dict):
            raise AddressFileError(f"{source}: {key!r} must be <namespace>/<pod> -> an object")
        unknown = set(entry) - {"grpc", "metrics"}
        if unknown:
            raise AddressFileError(f"{source}: {key}: unknown keys {sorted(unknown)}")
        grpc, metrics = entry.get("grpc"), entry.get("metrics")
        if grpc is not None and (not isinstance(grpc, str) or ":" not in grpc):
            raise AddressFileError(f"{source}: {key}.grpc must be HOST:PORT, got {grpc!r}")
        if metrics is not None and not str(metrics).startswith(("http://", "https://")):
            raise AddressFileError(f"{source}: {key}.metrics must be an http(s) URL")
        out[key] = PodAddress(grpc, metrics)
    return out


def _pod_ip(pod: Manifest) -> str | None:
    ip = (pod.get("status") or {}).get("podIP")
    return str(ip) if ip else None


def default_address(pod: Manifest, router: bool) -> PodAddress:
    ip = _pod_ip(pod)
    if ip is None:
        return PodAddress(None, None)
    host = f"[{ip}]" if ":" in ip else ip
    if router:
        return PodAddress(None, f"http://{host}:{ROUTER_PORT}/metrics")
    return PodAddress(f"{host}:{WORKER_PORT}", f"http://{host}:{METRICS_PORT}/metrics")


class AddressBook:
    """Pod -> address: the override file's entry if it has one, else the pod IP."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._stamp: float | None = None
        self._overrides: dict[str, PodAddress] = {}

    def _reload(self) -> None:
        if self._path is None:
            return
        try:
            stamp = os.stat(self._path).st_mtime_ns
        except FileNotFoundError:
            self._overrides, self._stamp = {}, None
            return
        if stamp != self._stamp:
            self._overrides = parse_overrides(self._path.read_text(), str(self._path))
            self._stamp = stamp

    def of(self, pod: Manifest, router: bool = False) -> PodAddress:
        self._reload()
        meta = pod["metadata"]
        found = self._overrides.get(f"{meta['namespace']}/{meta['name']}")
        return found if found is not None else default_address(pod, router)
