"""Is a launched process ready? gRPC Health for workers, HTTP /health for the router."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
import grpc

from tandem.rpc.v1 import worker_pb2, worker_pb2_grpc

PROBE_DEADLINE_S = 2.0


class NotReady(RuntimeError):
    """A process did not become ready (it exited, or time ran out)."""


async def worker_ready(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        try:
            health = await stub.Health(worker_pb2.HealthRequest(), timeout=PROBE_DEADLINE_S)
        except grpc.aio.AioRpcError:
            return False
    return bool(health.status == worker_pb2.HealthResponse.SERVING)


async def http_ready(url: str) -> bool:
    timeout = aiohttp.ClientTimeout(total=PROBE_DEADLINE_S)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def wait_ready(
    name: str,
    probe: Callable[[], Awaitable[bool]],
    exited: Callable[[], int | None],
    timeout_s: float,
    interval_s: float = 0.25,
) -> None:
    """Poll `probe` until it says ready; fail early if the process exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        code = exited()
        if code is not None:
            raise NotReady(f"{name} exited with status {code} before becoming ready")
        if await probe():
            return
        if time.monotonic() > deadline:
            raise NotReady(f"{name} not ready after {timeout_s:.0f}s")
        await asyncio.sleep(interval_s)
