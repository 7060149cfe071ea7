"""KV shipping between workers: one interface, several transports.

A prefill worker ships a request's KV cache to the decode worker that reserved
blocks for it, layer by layer while later layers still compute. The engine's
`kv_sink` runs on the engine thread and only enqueues (`KVSender.submit`); the
sender drains the queue on the event loop over `num_streams` parallel PushKV
calls. Every transport uses PushKV for its control messages; what travels in a
message differs:

- "grpc": the bytes themselves, in pieces of at most `MAX_PIECE_BYTES`
  (always available, the fallback);
- "shm": an offset into a shared-memory segment the sender filled (same host).

A new transport (CUDA IPC, NCCL) is one module with a `KVTransport` subclass
(`open_session`/`encode` on the sending side, `open_receiver` on the receiving
side), an entry in `_TRANSPORT_MODULES` and in `_MESSAGE_FIELDS` (plus its
field in the KVChunk message, e.g. a CUDA IPC handle); the selection below
already knows its rank.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import Counter, Histogram

from tandem.rpc.v1 import worker_pb2

if TYPE_CHECKING:
    import torch

    from tandem.worker.outputs import KVChunk

log = logging.getLogger(__name__)

#: Transport names, fastest first: the order selection prefers.
FASTEST_FIRST = ("cuda_ipc", "nccl", "shm", "grpc")
#: Transports that only work when both ends share a host (and its /dev/shm or GPUs).
SAME_HOST_ONLY = frozenset({"cuda_ipc", "shm"})
#: Module implementing each transport (imported lazily: keeps start-up light).
_TRANSPORT_MODULES = {
    "grpc": "tandem.worker.kv_transport_grpc",
    "shm": "tandem.worker.kv_transport_shm",
    "cuda_ipc": "tandem.worker.kv_transport_cuda_ipc",
}
#: The KVChunk message field that marks a transport's messages; a message
#: with none of them carries its bytes inline ("grpc").
_MESSAGE_FIELDS = {"shm": "shm", "cuda_ipc": "cuda_ipc"}
#: Largest K+V payload of one PushKV message (gRPC's default limit is 4 MiB).
MAX_PIECE_BYTES = 4 * 1024 * 1024
#: Message limit set on worker channels/servers: above MAX_PIECE_BYTES so that
#: one block larger than a piece (huge heads) still fits in a message.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_NUM_STREAMS = 4
#: gRPC method that carries KV chunks (called with pre-encoded messages).
PUSH_KV_METHOD = "/tandem.v1.WorkerService/PushKV"
#: Deadline of one PushKV call: a transfer that takes longer has failed.
PUSH_DEADLINE_S = 120.0

KV_TRANSFER_BYTES = Counter(
    "tandem_kv_transfer_bytes", "KV cache bytes shipped to decode workers", ["transport"]
)
KV_TRANSFER_SECONDS = Histogram(
    "tandem_kv_transfer_seconds",
    "Seconds from a transfer's first chunk to its last acknowledgement",
    ["transport"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
for _name in _TRANSPORT_MODULES:  # export zeros before the first transfer
    KV_TRANSFER_BYTES.labels(_name)
    KV_TRANSFER_SECONDS.labels(_name)


class TransferError(RuntimeError):
    """A KV transfer could not be set up or did not complete."""


class NoCommonTransport(TransferError):
    """The two ends share no KV transport."""


class BadKVMessage(TransferError):
    """A received PushKV message does not fit this worker (names the field)."""


@dataclass(frozen=True)
class Endpoint:
    """What one end of a transfer supports."""

    transports: tuple[str, ...]
    host_id: str


def select_transport(sender: Endpoint, receiver: Endpoint, requested: str = "") -> str:
    """The fastest transport both ends support (or check the requested one)."""
    same_host = bool(sender.host_id) and sender.host_id == receiver.host_id

    def usable(name: str) -> bool:
        both = name in sender.transports and name in receiver.transports
        return both and (same_host or name not in SAME_HOST_ONLY)

    if requested:
        if not usable(requested):
            raise NoCommonTransport(
                f"transport {requested!r} is not usable between sender {sender} and receiver {receiver}"
            )
        return requested
    for name in FASTEST_FIRST:
        if usable(name):
            return name
    raise NoCommonTransport(f"no common KV transport: sender {sender}, receiver {receiver}")


@dataclass(frozen=True)
class KVLayout:
    """Shape of one KV block of one layer, as both ends must agree."""

    num_layers: int
    block_size: int
    num_kv_heads: int
    head_dim: int
    dtype: str  # torch dtype name without "torch.", e.g. "bfloat16"

    def __post_init__(self) -> None:
        for name in ("num_layers", "block_size", "num_kv_heads", "head_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"KVLayout.{name} must be >= 1, got {getattr(self, name)}")
        if self.dtype not in _ITEM_SIZE:
            raise ValueError(f"KVLayout.dtype: unsupported {self.dtype!r}")

    @property
    def block_shape(self) -> tuple[int, int, int]:
        return (self.block_size, self.num_kv_heads, self.head_dim)

    @property
    def block_bytes(self) -> int:
        """Bytes of K (or of V) of one block of one layer."""
        return self.block_size * self.num_kv_heads * self.head_dim * _ITEM_SIZE[self.dtype]

    def blocks_per_piece(self, limit: int = MAX_PIECE_BYTES) -> int:
        return max(1, limit // (2 * self.block_bytes))

    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype)  # type: ignore[no-any-return]


_ITEM_SIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1}


@dataclass(frozen=True)
class TransferTarget:
    """Where one request's KV goes (the decode worker's reservation)."""

    address: str
    request_id: str
    block_ids: tuple[int, ...]
    skip_blocks: int
    transport: str = ""
    num_streams: int = 0

    @property
    def num_blocks_to_ship(self) -> int:
        return len(self.block_ids) - self.skip_blocks

    def __post_init__(self) -> None:
        if not self.address:
            raise ValueError("target.address: empty")
        if not self.request_id:
            raise ValueError("target.request_id: empty")
        if not 0 <= self.skip_blocks <= len(self.block_ids):
            raise ValueError(
                f"target.skip_blocks: {self.skip_blocks} not in [0, {len(self.block_ids)}]"
            )
        if self.num_streams < 0:
            raise ValueError(f"target.num_streams: must be >= 0, got {self.num_streams}")


@dataclass(frozen=True)
class TransferStats:
    transport: str
    bytes: int
    chunks: int
    seconds: float


class ChunkLike(Protocol):
    """What a sender needs of the engine's KVChunk."""

    @property
    def layer(self) -> int: ...
    @property
    def first_block(self) -> int: ...
    @property
    def k(self) -> torch.Tensor: ...  # [n, block_size, num_kv_heads, head_dim]
    @property
    def v(self) -> torch.Tensor: ...
    @property
    def ready(self) -> Any: ...  # CUDA event after which k and v are complete, or None


class KVReceiver(ABC):
    """Turns the messages of one PushKV stream into engine KVChunks."""

    @abstractmethod
    def decode(self, msg: worker_pb2.KVChunk) -> KVChunk:
        """The chunk `msg` describes; its tensors stay valid until `close`."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release what the stream held (mappings, handles)."""


class KVTransport(ABC):
    """One way of moving KV bytes; PushKV carries its control messages."""

    name: str

    def open_session(self, target: TransferTarget, layout: KVLayout) -> TransportSession:
        """Per-transfer sending state (e.g. a shared-memory segment)."""
        return TransportSession()

    @abstractmethod
    def encode(
        self, session: TransportSession, chunk: ChunkLike, target: TransferTarget, layout: KVLayout
    ) -> list[bytes]:
        """Wire-encoded PushKV messages (tandem.v1.KVChunk) for one chunk. Runs in
        a worker thread, off the event loop: it may copy. Transports encode
        themselves because protobuf's generic serializer is slow for large
        byte fields (about 0.4 GB/s here, against several GB/s for a join)."""

    @abstractmethod
    def open_receiver(self, layout: KVLayout) -> KVReceiver:
        """Receiving state for one PushKV stream."""

    def shutdown(self) -> None:  # noqa: B027 (optional hook)
        """Release process-wide resources (pools, caches) when the worker stops."""


class TransportSession:
    """Per-transfer state of a transport; `close` runs on every path."""

    def close(self, completed: bool = False) -> None:
        """Release the transfer's resources (idempotent). `completed`: every
        chunk was acknowledged, so the receiver is done with them and they may
        be recycled; otherwise they must be destroyed."""


def load_transport(name: str) -> KVTransport:
    module_name = _TRANSPORT_MODULES.get(name)
    if module_name is None:
        raise TransferError(f"unknown KV transport {name!r}; known: {sorted(_TRANSPORT_MODULES)}")
    transport: KVTransport = importlib.import_module(module_name).TRANSPORT
    return transport


def available_transports(wanted: Sequence[str] | None = None) -> tuple[str, ...]:
    """Transports this process can use, fastest first (optionally restricted)."""
    names = [n for n in FASTEST_FIRST if n in _TRANSPORT_MODULES]
    if wanted is not None:
        unknown = set(wanted) - set(_TRANSPORT_MODULES)
        if unknown:
            raise ValueError(f"unknown KV transports {sorted(unknown)}; known: {names}")
        names = [n for n in names if n in wanted]
    return tuple(n for n in names if getattr(load_transport(n), "available", lambda: True)())


def piece_ranges(num_blocks: int, per_piece: int) -> list[tuple[int, int]]:
    """Split [0, num_blocks) into (start, count) runs of at most per_piece blocks."""
    return [(s, min(per_piece, num_blocks - s)) for s in range(0, num_blocks, per_piece)]


def transport_of(msg: worker_pb2.KVChunk) -> str:
    """Which transport a received message belongs to."""
    for name, field in _MESSAGE_FIELDS.items():
        if msg.HasField(field):
            return name
    return "grpc"


def check_message(msg: worker_pb2.KVChunk, layout: KVLayout) -> None:
    """Reject a message that does not fit the receiver's layout (names the field)."""
    if msg.layer >= layout.num_layers:
        raise BadKVMessage(f"KVChunk.layer: {msg.layer} >= num_layers {layout.num_layers}")
    if msg.num_blocks < 1:
        raise BadKVMessage("KVChunk.num_blocks: must be >= 1")
    if msg.dtype != layout.dtype:
        raise BadKVMessage(f"KVChunk.dtype: {msg.dtype!r} but this worker holds {layout.dtype!r}")
    if not msg.request_id:
        raise BadKVMessage("KVChunk.request_id: empty")
