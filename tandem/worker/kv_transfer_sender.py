"""The sending half of a KV transfer: one request's chunks, from the engine
thread to the decode worker over parallel PushKV streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Sequence

import grpc

from tandem.rpc.v1 import worker_pb2
from tandem.worker.kv_transfer import (
    KV_TRANSFER_BYTES,
    KV_TRANSFER_SECONDS,
    PUSH_DEADLINE_S,
    ChunkLike,
    KVLayout,
    KVTransport,
    TransferError,
    TransferStats,
    TransferTarget,
)

_DONE = object()


class KVSender:
    """Ships one request's KV: `submit` from the engine thread, then `finish`.

    Chunks go through an asyncio queue to `num_streams` concurrent PushKV calls,
    so encoding and sending overlap the engine's work on later layers.
    """

    def __init__(
        self,
        transport: KVTransport,
        target: TransferTarget,
        layout: KVLayout,
        pushers: Sequence[grpc.aio.StreamUnaryMultiCallable],
        deadline_s: float = PUSH_DEADLINE_S,
    ) -> None:
        if not pushers:
            raise ValueError("KVSender needs at least one PushKV callable")
        self.transport = transport
        self._target = target
        self._layout = layout
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._session = transport.open_session(target, layout)
        self._bytes = 0
        self._chunks = 0
        self._started: float | None = None
        self._closed = False
        self._calls = [push(self._messages(), timeout=deadline_s) for push in pushers]

    def submit(self, chunk: ChunkLike) -> None:
        """Enqueue one chunk; safe to call from any thread, never blocks."""
        if self._started is None:
            self._started = time.perf_counter()
        self._loop.call_soon_threadsafe(self._queue.put_nowait, chunk)

    async def _messages(self) -> AsyncIterator[bytes]:
        while True:
            item = await self._queue.get()
            if item is _DONE:
                return
            chunk: ChunkLike = item  # type: ignore[assignment]
            msgs = await asyncio.to_thread(
                self.transport.encode, self._session, chunk, self._target, self._layout
            )
            self._chunks += 1
            self._bytes += 2 * chunk.k.shape[0] * self._layout.block_bytes
            for msg in msgs:
                yield msg

    async def finish(self) -> TransferStats:
        """Wait until the receiver has imported every chunk; record the metrics."""
        try:
            # call_soon keeps FIFO order with the submits the engine thread
            # scheduled (call_soon_threadsafe) before prefill returned.
            for _ in self._calls:
                self._loop.call_soon(self._queue.put_nowait, _DONE)
            await asyncio.gather(*(_await_call(c) for c in self._calls))
        except BaseException:
            await self.abort()
            raise
        self._close(completed=True)
        started = self._started if self._started is not None else time.perf_counter()
        stats = TransferStats(
            self.transport.name, self._bytes, self._chunks, time.perf_counter() - started
        )
        KV_TRANSFER_BYTES.labels(stats.transport).inc(stats.bytes)
        KV_TRANSFER_SECONDS.labels(stats.transport).observe(stats.seconds)
        return stats

    async def abort(self) -> None:
        """Stop sending and release the transfer's resources (idempotent)."""
        for call in self._calls:
            call.cancel()
        self._close()

    def _close(self, completed: bool = False) -> None:
        if not self._closed:
            self._closed = True
            self._session.close(completed)


async def _await_call(call: Awaitable[worker_pb2.PushKVResponse]) -> None:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        raise TransferError(f"PushKV failed: {exc.code().name}: {exc.details()}") from exc
