"""Where the workers are: the interface every discovery source implements.

`StaticDiscovery` serves a fixed `--workers` list and learns each worker's
role from its Health answer; `tandem.router.discovery_kube` watches
EndpointSlices. The router only ever calls `snapshot()`, so a source may
refresh in the background at its own pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

ROLES = ("prefill", "decode", "both")


@dataclass(frozen=True)
class WorkerEndpoint:
    name: str
    address: str
    role: str  # "prefill" | "decode" | "both"
    ready: bool


class Discovery(Protocol):
    def snapshot(self) -> tuple[WorkerEndpoint, ...]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


#: address -> (serving, role); None when the worker is slow to answer (keep what
#: is known: a busy worker is not a gone one); raises when it is unreachable.
Probe = Callable[[str], Awaitable[tuple[bool, str] | None]]


def parse_addresses(spec: str) -> tuple[str, ...]:
    """`host:port,host:port` -> addresses, checked for shape and duplicates."""
    addresses = tuple(a.strip() for a in spec.split(",") if a.strip())
    if not addresses:
        raise ValueError("--workers needs at least one HOST:PORT")
    for a in addresses:
        host, _, port = a.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"worker address {a!r} is not HOST:PORT")
    if len(set(addresses)) != len(addresses):
        raise ValueError(f"duplicate worker addresses in {spec!r}")
    return addresses


class StaticDiscovery:
    """A fixed list of addresses; readiness and role come from probing each worker."""

    def __init__(self, addresses: Sequence[str], probe: Probe, interval_s: float = 2.0) -> None:
        self._addresses = tuple(addresses)
        self._probe = probe
        self._interval_s = interval_s
        self._endpoints = {a: WorkerEndpoint(a, a, "both", False) for a in self._addresses}
        self._task: asyncio.Task[None] | None = None

    def snapshot(self) -> tuple[WorkerEndpoint, ...]:
        return tuple(self._endpoints[a] for a in self._addresses)

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def refresh(self) -> None:
        results = await asyncio.gather(*(self._probe(a) for a in self._addresses), return_exceptions=True)
        for address, result in zip(self._addresses, results, strict=True):
            old = self._endpoints[address]
            if isinstance(result, BaseException):
                new = WorkerEndpoint(address, address, old.role, False)
            elif result is None:
                new = old
            else:
                serving, role = result
                new = WorkerEndpoint(address, address, role if role in ROLES else old.role, serving)
            if new != old:
                log.info("worker %s: ready=%s role=%s", address, new.ready, new.role)
            self._endpoints[address] = new

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.refresh()
