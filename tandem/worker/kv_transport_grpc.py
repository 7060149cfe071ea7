"""KV over gRPC: the bytes travel inside PushKV messages.

Always available, so it is the fallback between any two workers. A chunk is
split into pieces of at most `MAX_PIECE_BYTES` of K+V so every message stays
under gRPC's default limit; several PushKV streams run in parallel.
"""

from __future__ import annotations

import warnings

import torch

from tandem.rpc.v1 import worker_pb2
from tandem.worker.kv_staging import after_ready
from tandem.worker.kv_transfer import (
    BadKVMessage,
    ChunkLike,
    KVLayout,
    KVReceiver,
    KVTransport,
    TransferTarget,
    TransportSession,
    check_message,
    piece_ranges,
)
from tandem.worker.outputs import KVChunk

# Received protobuf bytes are immutable; the engine only reads them (import_kv
# copies into its pool), so torch's non-writable-buffer warning is noise here.
warnings.filterwarnings("ignore", message="The given buffer is not writable")


def tensor_buffer(t: torch.Tensor) -> memoryview:
    """The raw bytes of a tensor (any device, any dtype), C order, without a copy
    where the tensor is already a contiguous CPU tensor."""
    t = t.detach().contiguous()
    if t.device.type != "cpu":
        t = t.cpu()
    return t.view(-1).view(torch.uint8).numpy().data  # a memoryview, no copy


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


# Wire tags of KVChunk.k (field 6) and KVChunk.v (field 7): length-delimited.
_K_TAG = bytes([6 << 3 | 2])
_V_TAG = bytes([7 << 3 | 2])


def encode_chunk(header: worker_pb2.KVChunk, k: memoryview, v: memoryview) -> bytes:
    """`header` with k and v set, in protobuf wire format: the small header goes
    through protobuf, the payload is appended in one join (one copy). Protobuf
    parses fields in any order, so this equals a full SerializeToString."""
    return b"".join(
        (header.SerializeToString(), _K_TAG, _varint(k.nbytes), k, _V_TAG, _varint(v.nbytes), v)
    )


def tensor_from_bytes(data: bytes, layout: KVLayout, num_blocks: int) -> torch.Tensor:
    """[num_blocks, block_size, num_kv_heads, head_dim] view over `data`."""
    expected = num_blocks * layout.block_bytes
    if len(data) != expected:
        raise BadKVMessage(f"KVChunk payload: {len(data)} bytes, expected {expected}")
    flat = torch.frombuffer(data, dtype=torch.uint8)
    return flat.view(layout.torch_dtype()).view(num_blocks, *layout.block_shape)


class GrpcTransport(KVTransport):
    name = "grpc"

    def available(self) -> bool:
        return True

    def encode(
        self, session: TransportSession, chunk: ChunkLike, target: TransferTarget, layout: KVLayout
    ) -> list[bytes]:
        n = chunk.k.shape[0]
        with after_ready(chunk):  # off the GPU without waiting for later layers
            k_all, v_all = chunk.k.cpu(), chunk.v.cpu()
        msgs = []
        for start, count in piece_ranges(n, layout.blocks_per_piece()):
            header = worker_pb2.KVChunk(
                request_id=target.request_id,
                layer=chunk.layer,
                first_block=chunk.first_block + start,
                num_blocks=count,
                dtype=layout.dtype,
            )
            k = tensor_buffer(k_all[start : start + count])
            v = tensor_buffer(v_all[start : start + count])
            msgs.append(encode_chunk(header, k, v))
        return msgs

    def open_receiver(self, layout: KVLayout) -> KVReceiver:
        return _GrpcReceiver(layout)


class _GrpcReceiver(KVReceiver):
    def __init__(self, layout: KVLayout) -> None:
        self._layout = layout

    def decode(self, msg: worker_pb2.KVChunk) -> KVChunk:
        check_message(msg, self._layout)
        return KVChunk(
            request_id=msg.request_id,
            layer=msg.layer,
            first_block=msg.first_block,
            k=tensor_from_bytes(msg.k, self._layout, msg.num_blocks),
            v=tensor_from_bytes(msg.v, self._layout, msg.num_blocks),
        )


TRANSPORT = GrpcTransport()
