"""The worker registry against a scripted discovery and in-memory clients (no gRPC)."""

from __future__ import annotations

import asyncio

from tandem.router.discovery import WorkerEndpoint
from tandem.router.registry import WorkerRegistry
from tandem.router.selection import Load
from tandem.router.worker_client import ModelFacts, WorkerInfo


class _Discovery:
    def __init__(self, endpoints: tuple[WorkerEndpoint, ...]) -> None:
        self.endpoints = endpoints

    def snapshot(self) -> tuple[WorkerEndpoint, ...]:
        return self.endpoints

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class _Client:
    """Answers Load at once; closing takes a moment, as closing a gRPC channel does."""

    def __init__(self, name: str, address: str) -> None:
        self.name, self.address = name, address
        self.closing = asyncio.Event()
        self.release = asyncio.Event()

    async def load(self, prompt: object = None, timeout: float = 1.0) -> tuple[Load, int]:
        return Load("both"), 0

    async def info(self, timeout: float = 1.0) -> WorkerInfo:
        return WorkerInfo(ModelFacts("m", 64, 100, (2,), 16), "both", ("grpc",), "host")

    async def close(self) -> None:
        self.closing.set()
        await self.release.wait()


async def test_views_stay_consistent_while_a_removed_worker_closes() -> None:
    a, b = WorkerEndpoint("a", "a:1", "both", True), WorkerEndpoint("b", "b:1", "both", True)
    discovery = _Discovery((a, b))
    clients: dict[str, _Client] = {}

    def factory(name: str, address: str) -> _Client:
        clients[name] = _Client(name, address)
        return clients[name]

    registry = WorkerRegistry(discovery, client_factory=factory)  # type: ignore[arg-type]
    await registry.poll()
    assert [v.name for v in registry.views() if v.up] == ["a", "b"]
    discovery.endpoints = (a,)
    polling = asyncio.create_task(registry.poll())
    await clients["b"].closing.wait()
    # Requests read the views while the gone worker's channel is still closing.
    assert [v.name for v in registry.views()] in (["a"], ["a", "b"])
    clients["b"].release.set()
    await polling
    assert [v.name for v in registry.views()] == ["a"]


async def test_a_worker_that_left_since_it_was_chosen_is_a_503_not_a_500() -> None:
    import pytest

    from tandem.router.errors import Unavailable

    a = WorkerEndpoint("a", "a:1", "both", True)
    discovery = _Discovery((a,))
    clients: dict[str, _Client] = {}

    def factory(name: str, address: str) -> _Client:
        clients[name] = _Client(name, address)
        clients[name].release.set()
        return clients[name]

    registry = WorkerRegistry(discovery, client_factory=factory)  # type: ignore[arg-type]
    await registry.poll()
    chosen = registry.views()[0].name
    discovery.endpoints = ()
    await registry.poll()  # the worker leaves between selection and the call
    with pytest.raises(Unavailable, match="left the pool"):
        registry.client(chosen)
    with pytest.raises(Unavailable), registry.track(chosen):
        pass
    assert Unavailable.status == 503
