"""The receiving half of a KV transfer: one PushKV stream into the engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING

from tandem.rpc.v1 import worker_pb2
from tandem.worker.kv_transfer import (
    BadKVMessage,
    KVLayout,
    KVReceiver,
    load_transport,
    transport_of,
)

if TYPE_CHECKING:
    from tandem.worker.outputs import KVChunk


async def receive(
    messages: AsyncIterator[worker_pb2.KVChunk],
    layout: KVLayout,
    accepted: Sequence[str],
    import_kv: Callable[[KVChunk], None],
) -> worker_pb2.PushKVResponse:
    """Import every chunk of one PushKV stream; release transport state on every path."""
    receivers: dict[str, KVReceiver] = {}
    count = 0
    nbytes = 0
    try:
        async for msg in messages:
            name = transport_of(msg)
            if name not in accepted:
                raise BadKVMessage(f"KV transport {name!r} not accepted here ({list(accepted)})")
            receiver = receivers.get(name)
            if receiver is None:
                receiver = receivers[name] = load_transport(name).open_receiver(layout)
            chunk = receiver.decode(msg)
            # The copy into the pool may wait for the engine thread: keep the loop free.
            await asyncio.to_thread(import_kv, chunk)
            count += 1
            nbytes += 2 * msg.num_blocks * layout.block_bytes
            del chunk
    finally:
        for receiver in receivers.values():
            receiver.close()
    return worker_pb2.PushKVResponse(chunks=count, bytes=nbytes)
