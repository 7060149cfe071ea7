"""EndpointSlice discovery: the pure slice -> endpoints conversion (no cluster).

The watch itself is tested against the local control plane in
tests/operator/test_k8s_discovery.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from tandem.router.discovery import WorkerEndpoint
from tandem.router.discovery_kube import EndpointSliceDiscovery, endpoints_from_slice, merge


def slice_(role: str | None = "decode", endpoints: list[dict[str, Any]] | None = None,
           ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    labels = {"tandem.dev/pool": "p"} | ({"tandem.dev/role": role} if role else {})
    return {
        "metadata": {"name": "s", "labels": labels},
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": 50051}] if ports is None else ports,
        "endpoints": endpoints or [],
    }


def ep(ip: str, pod: str | None = None, **conditions: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"addresses": [ip], "conditions": conditions}
    if pod:
        out["targetRef"] = {"kind": "Pod", "name": pod, "namespace": "ns"}
    return out


@pytest.mark.parametrize(
    ("slc", "expected"),
    [
        (slice_(endpoints=[ep("10.0.0.1", "p-decode-a", ready=True)]),
         (WorkerEndpoint("p-decode-a", "10.0.0.1:50051", "decode", True),)),
        # ready unset means ready (API semantics); terminating is never routable
        (slice_("prefill", [ep("10.0.0.2"), ep("10.0.0.3", ready=True, terminating=True)]),
         (WorkerEndpoint("10.0.0.2:50051", "10.0.0.2:50051", "prefill", True),
          WorkerEndpoint("10.0.0.3:50051", "10.0.0.3:50051", "prefill", False))),
        (slice_(endpoints=[ep("10.0.0.4", "w", ready=False)]),
         (WorkerEndpoint("w", "10.0.0.4:50051", "decode", False),)),
        (slice_(endpoints=[ep("fd00::5", "w6", ready=True)]),
         (WorkerEndpoint("w6", "[fd00::5]:50051", "decode", True),)),
        # the port named grpc wins over others
        (slice_(endpoints=[ep("10.0.0.6", "w")],
                ports=[{"name": "metrics", "port": 9090}, {"name": "grpc", "port": 7000}]),
         (WorkerEndpoint("w", "10.0.0.6:7000", "decode", True),)),
        (slice_(None, [ep("10.0.0.7")]), ()),  # no role label: not ours to route to
        (slice_("router", [ep("10.0.0.8")]), ()),  # routers are not workers
        (slice_(endpoints=[ep("10.0.0.9")], ports=[]), ()),  # no port: nothing to dial
        (slice_(endpoints=[{"addresses": [], "conditions": {"ready": True}}]), ()),
        # The worker Services publish not-ready addresses, so the EndpointSlice controller
        # writes ready=true for every pod; serving carries the pod's own readiness.
        (slice_(endpoints=[ep("10.0.0.10", "w", ready=True, serving=False, terminating=False),
                           ep("10.0.0.11", "v", ready=True, serving=True, terminating=False)]),
         (WorkerEndpoint("w", "10.0.0.10:50051", "decode", False),
          WorkerEndpoint("v", "10.0.0.11:50051", "decode", True))),
    ],
)  # fmt: skip
def test_endpoints_from_slice(slc: dict[str, Any], expected: tuple[WorkerEndpoint, ...]) -> None:
    assert endpoints_from_slice(slc) == expected


def test_merge_prefers_ready_and_sorts() -> None:
    a = WorkerEndpoint("a", "10.0.0.2:1", "decode", False)
    a_ready = WorkerEndpoint("a", "10.0.0.2:1", "decode", True)
    b = WorkerEndpoint("b", "10.0.0.1:1", "prefill", True)
    assert merge([(a,), (b, a_ready)]) == (b, a_ready)
    assert merge([(a_ready,), (a,)]) == (b, a_ready)[1:]


def test_constructor_checks_arguments() -> None:
    with pytest.raises(ValueError, match="namespace and a pool"):
        EndpointSliceDiscovery(namespace="", pool="p")
    assert EndpointSliceDiscovery("ns", "p").selector == "tandem.dev/pool=p,tandem.dev/role"


def test_watch_loop_relists_after_410_gone() -> None:
    from kubernetes.client.exceptions import ApiException

    source = EndpointSliceDiscovery("ns", "p")
    source._resource_version = "42"
    calls: list[str] = []

    def relist() -> None:
        calls.append("list")
        source._resource_version = "100"

    def watch_once() -> None:
        calls.append(f"watch@{source._resource_version}")
        if len(calls) == 1:
            raise ApiException(status=410, reason="Expired: too old resource version")
        source._stopping.set()  # second watch: end the loop

    source._relist = relist  # type: ignore[method-assign]
    source._watch_once = watch_once  # type: ignore[method-assign]
    source._run()
    assert calls == ["watch@42", "list", "watch@100"]


def test_watch_loop_backs_off_and_relists_after_connection_loss() -> None:
    source = EndpointSliceDiscovery("ns", "p")
    source._resource_version = "42"
    calls: list[str] = []

    def relist() -> None:
        calls.append("list")
        source._resource_version = "100"

    def watch_once() -> None:
        calls.append("watch")
        if len(calls) == 1:
            raise ConnectionResetError("peer went away")
        source._stopping.set()

    source._relist = relist  # type: ignore[method-assign]
    source._watch_once = watch_once  # type: ignore[method-assign]
    source._run()
    assert calls == ["watch", "list", "watch"]
