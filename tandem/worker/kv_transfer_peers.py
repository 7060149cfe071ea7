"""gRPC channels from this worker to its peers (decode workers it ships KV to).

Each peer gets `num_streams` channels with private subchannel pools, so that
parallel PushKV streams really use separate TCP connections instead of being
multiplexed onto one. A peer's Info (transports, host id) is cached briefly.
"""

from __future__ import annotations

import asyncio
import time

import grpc

from tandem.rpc.v1 import worker_pb2, worker_pb2_grpc
from tandem.worker.kv_transfer import (
    MAX_MESSAGE_BYTES,
    PUSH_KV_METHOD,
    Endpoint,
    TransferError,
)

CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.use_local_subchannel_pool", 1),
)
INFO_DEADLINE_S = 5.0
INFO_TTL_S = 30.0


class PeerChannels:
    def __init__(self) -> None:
        self._channels: dict[str, list[grpc.aio.Channel]] = {}
        self._info: dict[str, tuple[float, Endpoint]] = {}
        self._lock = asyncio.Lock()

    def stubs(self, address: str, count: int) -> list[worker_pb2_grpc.WorkerServiceStub]:
        """`count` stubs to `address`, each on its own connection (created on demand)."""
        channels = self._channels.setdefault(address, [])
        while len(channels) < count:
            channels.append(grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS))
        return [worker_pb2_grpc.WorkerServiceStub(c) for c in channels[:count]]

    def push_kv(self, address: str, count: int) -> list[grpc.aio.StreamUnaryMultiCallable]:
        """`count` PushKV callables to `address`, each on its own connection. They
        take messages already encoded (bytes): KVTransport.encode does that."""
        self.stubs(address, count)  # opens the channels
        return [
            channel.stream_unary(
                PUSH_KV_METHOD, response_deserializer=worker_pb2.PushKVResponse.FromString
            )
            for channel in self._channels[address][:count]
        ]

    async def endpoint(self, address: str) -> Endpoint:
        """The peer's accepted transports and host id (from Info, cached)."""
        cached = self._info.get(address)
        if cached is not None and time.monotonic() - cached[0] < INFO_TTL_S:
            return cached[1]
        stub = self.stubs(address, 1)[0]
        try:
            info = await stub.Info(worker_pb2.InfoRequest(), timeout=INFO_DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            raise TransferError(
                f"KV target {address} did not answer Info: {exc.code().name}"
            ) from exc
        endpoint = Endpoint(tuple(info.kv_transports), info.host_id)
        self._info[address] = (time.monotonic(), endpoint)
        return endpoint

    async def close(self) -> None:
        channels = [c for cs in self._channels.values() for c in cs]
        self._channels.clear()
        await asyncio.gather(*(c.close() for c in channels))
