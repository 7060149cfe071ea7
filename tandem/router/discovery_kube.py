"""Worker discovery from EndpointSlices (the `--discovery kube` source).

The operator gives each worker role of a pool a headless Service labelled
`tandem.dev/pool` and `tandem.dev/role`; the EndpointSlice controller copies
those labels onto the Service's slices. This source lists the slices of one
pool, then watches them (relisting when the API server answers 410 Gone) and
keeps an immutable snapshot that the router reads without locking.

The watch runs in a daemon thread: the official client is blocking, and a
thread stuck in a long read must not keep the process alive on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from tandem.router.discovery import ROLES, WorkerEndpoint

log = logging.getLogger(__name__)

POOL_LABEL = "tandem.dev/pool"
ROLE_LABEL = "tandem.dev/role"
PORT_NAME = "grpc"
WATCH_SECONDS = 10  # server-side watch timeout: bounds how long stop() may wait
BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0)


def _port(slice_: Mapping[str, Any]) -> int | None:
    ports = [p for p in slice_.get("ports") or () if p.get("port")]
    named = [p for p in ports if p.get("name") == PORT_NAME]
    chosen = (named or ports)[:1]
    return int(chosen[0]["port"]) if chosen else None


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def endpoints_from_slice(slice_: Mapping[str, Any]) -> tuple[WorkerEndpoint, ...]:
    """One EndpointSlice (as the API's JSON, camelCase) -> its worker endpoints.

    A slice without a known role label or a port yields nothing. Readiness
    follows the API's rules: `serving` (else `ready`) unset means ready, and a
    terminating endpoint is never routable.
    """
    labels = (slice_.get("metadata") or {}).get("labels") or {}
    role, port = labels.get(ROLE_LABEL), _port(slice_)
    if role not in ROLES or port is None:
        return ()
    out = []
    for endpoint in slice_.get("endpoints") or ():
        addresses = endpoint.get("addresses") or ()
        if not addresses:
            continue
        conditions = endpoint.get("conditions") or {}
        # The worker Services publish not-ready addresses, for which the controller sets
        # ready=true whatever the pod's state; serving is the pod's own readiness.
        serving = conditions.get("serving")
        state = conditions.get("ready") if serving is None else serving
        ready = state is not False and not conditions.get("terminating")
        address = _host_port(addresses[0], port)  # all addresses of one endpoint are one pod
        target = endpoint.get("targetRef") or {}
        name = target.get("name") if target.get("kind") == "Pod" else None
        out.append(WorkerEndpoint(name or address, address, str(role), ready))
    return tuple(out)


def merge(groups: Iterable[tuple[WorkerEndpoint, ...]]) -> tuple[WorkerEndpoint, ...]:
    """Union over slices, one entry per address (a ready sighting wins), sorted by address."""
    by_address: dict[str, WorkerEndpoint] = {}
    for group in groups:
        for ep in group:
            seen = by_address.get(ep.address)
            if seen is None or (ep.ready and not seen.ready):
                by_address[ep.address] = ep
    return tuple(by_address[a] for a in sorted(by_address))


def _client(api: Any) -> Any:
    from kubernetes import client, config

    if api is None:
        try:
            config.load_incluster_config()
            return client.ApiClient()
        except config.ConfigException:
            return config.new_client_from_config()
    if isinstance(api, str):
        return config.new_client_from_config(config_file=api)
    return api


class EndpointSliceDiscovery:
    """`Discovery` over the EndpointSlices of one InferencePool.

    `api` is a `kubernetes.client.ApiClient`, a kubeconfig path, or None for
    in-cluster credentials (falling back to the default kubeconfig).
    """

    def __init__(self, namespace: str, pool: str, api: Any = None) -> None:
        if not namespace or not pool:
            raise ValueError("EndpointSliceDiscovery needs a namespace and a pool name")
        self.namespace, self.pool = namespace, pool
        self._api_arg = api
        self._api: Any = None
        self._slices: dict[str, tuple[WorkerEndpoint, ...]] = {}
        self._snapshot: tuple[WorkerEndpoint, ...] = ()
        self._resource_version: str | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: Any = None
        self.relists = 0  # how often the full list was read (start-up, 410 Gone, errors)

    @property
    def selector(self) -> str:
        return f"{POOL_LABEL}={self.pool},{ROLE_LABEL}"

    def snapshot(self) -> tuple[WorkerEndpoint, ...]:
        return self._snapshot

    async def start(self) -> None:
        self._api = await asyncio.to_thread(_client, self._api_arg)
        await asyncio.to_thread(self._relist)  # the first snapshot is complete on return
        self._spawn()

    def _spawn(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"endpointslices-{self.pool}", daemon=True
        )
        self._thread.start()

    async def stop(self) -> None:
        self._stopping.set()
        if self._watch is not None:
            self._watch.stop()
            # Unblock a read in progress; otherwise the thread sleeps until the next event.
            response = getattr(self._watch, "_resp", None)
            close = getattr(response, "shutdown", None) or getattr(response, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2.0)  # a daemon: never blocks exit
            self._thread = None

    def _discovery_api(self) -> Any:
        from kubernetes import client

        return client.DiscoveryV1Api(self._api)

    def _as_dict(self, obj: Any) -> dict[str, Any]:
        return dict(self._api.sanitize_for_serialization(obj))

    def _publish(self) -> None:
        self._snapshot = merge(self._slices[k] for k in sorted(self._slices))

    def _relist(self) -> None:
        listing = self._discovery_api().list_namespaced_endpoint_slice(
            self.namespace, label_selector=self.selector, _request_timeout=30
        )
        self._slices = {
            s.metadata.name: endpoints_from_slice(self._as_dict(s)) for s in listing.items or ()
        }
        self._resource_version = listing.metadata.resource_version
        self.relists += 1
        self._publish()

    def _apply(self, kind: str, obj: Any) -> None:
        if kind == "BOOKMARK":
            return
        name = obj.metadata.name
        if kind == "DELETED":
            self._slices.pop(name, None)
        else:
            self._slices[name] = endpoints_from_slice(self._as_dict(obj))
        self._publish()

    def _watch_once(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        self._watch = watch.Watch()
        stream = self._watch.stream(
            self._discovery_api().list_namespaced_endpoint_slice,
            self.namespace,
            label_selector=self.selector,
            resource_version=self._resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _request_timeout=WATCH_SECONDS + 10,
        )
        for event in stream:
            if self._stopping.is_set():
                return
            kind, obj = event["type"], event["object"]
            if kind == "ERROR":
                raw = event.get("raw_object") or {}
                raise ApiException(status=raw.get("code", 500), reason=raw.get("message"))
            self._apply(kind, obj)
            meta = (event.get("raw_object") or {}).get("metadata") or {}
            self._resource_version = meta.get("resourceVersion") or self._resource_version

    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        failures = 0
        while not self._stopping.is_set():
            try:
                if self._resource_version is None:
                    self._relist()
                self._watch_once()
                failures = 0
            except ApiException as exc:
                if self._stopping.is_set():
                    return
                if exc.status == 410:  # our resourceVersion is too old: list afresh
                    self._resource_version = None
                    continue
                failures += 1
                log.warning("EndpointSlice watch of pool %s: HTTP %s", self.pool, exc.status)
            except Exception as exc:  # connection loss and the like: back off, then relist
                if self._stopping.is_set():
                    return
                failures += 1
                self._resource_version = None
                log.warning("EndpointSlice watch of pool %s: %s", self.pool, exc)
            if failures:
                delay = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS)) - 1]
                self._stopping.wait(delay)
