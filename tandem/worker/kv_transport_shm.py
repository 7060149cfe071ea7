"""KV over shared memory: for two workers on one host.

The sender takes one segment per transfer (a file under /dev/shm, laid out
[layer][K|V][block] so every chunk has a fixed place), copies each chunk into
it and sends only the offsets over PushKV; the receiver maps the segment and
copies from it into its reserved blocks. The sender owns its segments: one
whose transfer completed goes back to its pool for the next transfer; one
whose transfer failed or was cancelled is removed at once; the pool is emptied
at shutdown. Segments of crashed processes are removed by
`sweep_stale_segments` at start-up.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tandem.rpc.v1 import worker_pb2
from tandem.worker.kv_staging import after_ready
from tandem.worker.kv_transfer import (
    BadKVMessage,
    ChunkLike,
    KVLayout,
    KVReceiver,
    KVTransport,
    TransferError,
    TransferTarget,
    TransportSession,
    check_message,
)
from tandem.worker.kv_transfer_segments import (
    SHM_DIR,
    MappedSegment,
    ReceiverMaps,
    SegmentPool,
    valid_segment_name,
)
from tandem.worker.outputs import KVChunk

log = logging.getLogger(__name__)


def segment_offsets(layout: KVLayout, num_blocks: int, layer: int, index: int) -> tuple[int, int]:
    """Byte offsets of K and V of block `index` (0 = first shipped block) of `layer`."""
    bb = layout.block_bytes
    k = ((2 * layer) * num_blocks + index) * bb
    v = ((2 * layer + 1) * num_blocks + index) * bb
    return k, v


class ShmSession(TransportSession):
    """The sender's segment for one transfer (taken from, and given back to, a pool)."""

    def __init__(self, pool: SegmentPool, target: TransferTarget, layout: KVLayout) -> None:
        self.num_blocks = target.num_blocks_to_ship
        self.skip_blocks = target.skip_blocks
        self._pool = pool
        size = 2 * layout.num_layers * self.num_blocks * layout.block_bytes
        self.mapping = pool.take(size) if size else None

    @property
    def name(self) -> str:
        assert self.mapping is not None
        return self.mapping.path.name

    def close(self, completed: bool = False) -> None:
        if self.mapping is not None:
            self._pool.give_back(self.mapping, reuse=completed)
            self.mapping = None


class ShmTransport(KVTransport):
    name = "shm"

    def __init__(self, shm_dir: Path = SHM_DIR) -> None:
        self.shm_dir = shm_dir
        self.pool = SegmentPool(shm_dir)
        self.maps = ReceiverMaps(shm_dir)

    def available(self) -> bool:
        return self.shm_dir.is_dir() and os.access(self.shm_dir, os.W_OK)

    def shutdown(self) -> None:
        self.maps.clear()
        self.pool.clear()

    def open_session(self, target: TransferTarget, layout: KVLayout) -> ShmSession:
        try:
            return ShmSession(self.pool, target, layout)
        except OSError as exc:
            raise TransferError(f"cannot create a shared-memory segment: {exc}") from exc

    def encode(
        self, session: TransportSession, chunk: ChunkLike, target: TransferTarget, layout: KVLayout
    ) -> list[bytes]:
        assert isinstance(session, ShmSession)
        if session.mapping is None:
            raise TransferError("shm transfer closed (or has nothing to ship)")
        index = chunk.first_block - session.skip_blocks
        n = chunk.k.shape[0]
        if index < 0 or index + n > session.num_blocks:
            raise TransferError(
                f"chunk blocks [{chunk.first_block}, {chunk.first_block + n}) outside the "
                f"shipped range [{session.skip_blocks}, {session.skip_blocks + session.num_blocks})"
            )
        k_off, v_off = segment_offsets(layout, session.num_blocks, chunk.layer, index)
        with after_ready(chunk):  # off the GPU without waiting for later layers
            session.mapping.view(k_off, layout, n).copy_(chunk.k)
            session.mapping.view(v_off, layout, n).copy_(chunk.v)
        region = worker_pb2.ShmRegion(segment=session.name, k_offset=k_off, v_offset=v_off)
        return [
            worker_pb2.KVChunk(
                request_id=target.request_id,
                layer=chunk.layer,
                first_block=chunk.first_block,
                num_blocks=n,
                dtype=layout.dtype,
                shm=region,
            ).SerializeToString()
        ]

    def open_receiver(self, layout: KVLayout) -> KVReceiver:
        return _ShmReceiver(layout, self.maps)


class _ShmReceiver(KVReceiver):
    """Reads chunks from the sender's segments; never removes one (the sender does)."""

    def __init__(self, layout: KVLayout, maps: ReceiverMaps) -> None:
        self._layout = layout
        self._maps = maps
        self._held: dict[str, MappedSegment] = {}

    def decode(self, msg: worker_pb2.KVChunk) -> KVChunk:
        check_message(msg, self._layout)
        name = msg.shm.segment
        if not valid_segment_name(name):
            raise BadKVMessage(f"KVChunk.shm.segment: {name!r} is not a Tandem segment name")
        mapping = self._held.get(name)
        if mapping is None:
            try:
                mapping = self._held[name] = self._maps.acquire(name)
            except OSError as exc:
                raise BadKVMessage(f"KVChunk.shm.segment: cannot open {name}: {exc}") from exc
        return KVChunk(
            request_id=msg.request_id,
            layer=msg.layer,
            first_block=msg.first_block,
            k=mapping.view(msg.shm.k_offset, self._layout, msg.num_blocks),
            v=mapping.view(msg.shm.v_offset, self._layout, msg.num_blocks),
        )

    def close(self) -> None:
        for mapping in self._held.values():
            self._maps.release(mapping)
        self._held.clear()


TRANSPORT = ShmTransport()
