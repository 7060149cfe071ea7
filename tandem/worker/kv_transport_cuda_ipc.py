"""KV over CUDA IPC: for two workers on one GPU node (one GPU or two).

The decode worker exports its paged KV cache once (CUDA IPC handles of every
layer's K and V tensors) in its Info reply. The prefill worker opens that
export once per peer and, for each chunk, copies the blocks device to device
straight into the decode worker's reserved block ids, on a stream of its own,
and waits until the copy is complete. Only then does a small PushKV message
say "layer L, blocks [i, i+n) are in place": the decode worker has nothing to
copy, its import only checks that the reservation still exists.

Errors: a transfer that fails (or is cancelled) drops the cached mapping of
that peer, so a decode worker that restarted on the same address is opened
afresh next time; a chunk naming another export than the receiver's current
one (`pool_id`) is refused. Writes land in the decode worker's pool without
its engine in the loop: the router must not hand a cancelled request's blocks
out again while its prefill may still be writing (the sender stops at the
first refused message).

torch.cuda is touched only when a transfer or export happens, so importing
this module is safe on machines without a GPU.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tandem.rpc.v1 import worker_pb2, worker_pb2_grpc
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
from tandem.worker.outputs import KVChunk

log = logging.getLogger(__name__)

#: Deadline of the Info call that fetches a peer's export.
HANDSHAKE_DEADLINE_S = 10.0


# ----- pure helpers (table-tested) ---------------------------------------------
def block_runs(block_ids: Sequence[int]) -> list[tuple[int, int, int]]:
    """(source index, first destination id, count) for each run of consecutive ids.

    A fresh pool hands out consecutive ids, so most chunks are one run and one
    plain copy; scattered ids fall back to an indexed copy."""
    runs: list[tuple[int, int, int]] = []
    for i, b in enumerate(block_ids):
        if runs and runs[-1][1] + runs[-1][2] == b:
            src, dst, n = runs[-1]
            runs[-1] = (src, dst, n + 1)
        else:
            runs.append((i, b, 1))
    return runs


def tensor_pb(args: Sequence[object]) -> worker_pb2.CudaIpcTensor:
    """The wire form of torch's CUDA sharing tuple (reduce_tensor's rebuild args)."""
    (_, _, _, _, _, _, _, handle, size, offset, _, rc_handle, rc_offset, ev_handle, ev_sync) = args
    return worker_pb2.CudaIpcTensor(
        handle=handle,  # type: ignore[arg-type]
        storage_size=size,  # type: ignore[arg-type]
        storage_offset=offset,  # type: ignore[arg-type]
        ref_counter_handle=rc_handle,  # type: ignore[arg-type]
        ref_counter_offset=rc_offset,  # type: ignore[arg-type]
        event_handle=ev_handle or b"",  # type: ignore[arg-type]
        event_sync_required=bool(ev_sync),
    )


def check_pool(pool: worker_pb2.CudaIpcPool, layout: KVLayout) -> None:
    """Reject an export that does not fit the sender's layout (names the field)."""
    if not pool.pool_id:
        raise BadKVMessage("CudaIpcPool.pool_id: empty (the peer exported no KV pool)")
    for name in ("k", "v"):
        tensors = getattr(pool, name)
        if len(tensors) != layout.num_layers:
            raise BadKVMessage(
                f"CudaIpcPool.{name}: {len(tensors)} tensors, expected {layout.num_layers} layers"
            )
        need = pool.num_blocks * layout.block_bytes
        for i, t in enumerate(tensors):
            if t.storage_size < need or not t.handle:
                raise BadKVMessage(
                    f"CudaIpcPool.{name}[{i}]: storage of {t.storage_size} bytes, "
                    f"{pool.num_blocks} blocks need {need}"
                )


# ----- exporting side (decode worker) ------------------------------------------
_export_lock = threading.Lock()
_exports: dict[int, tuple[list[tuple[torch.Tensor, torch.Tensor]], worker_pb2.CudaIpcPool]] = {}


def export_pool(kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> worker_pb2.CudaIpcPool:
    """This process's KV cache as CUDA IPC handles (made once, then cached).

    Each tensor must be C-contiguous [num_blocks, block_size, kv_heads, head_dim]
    at storage offset 0, which is how the model runner allocates them."""
    from torch.multiprocessing.reductions import reduce_tensor

    with _export_lock:
        cached = _exports.get(id(kv_caches))
        if cached is not None and cached[0] is kv_caches:
            return cached[1]
        first = kv_caches[0][0]
        if first.device.type != "cuda":
            raise TransferError(f"cuda_ipc: the KV cache is on {first.device}, not a CUDA device")
        pool = worker_pb2.CudaIpcPool(
            pool_id=uuid.uuid4().hex,
            device_uuid=_device_uuid(first.device.index or 0),
            num_blocks=first.shape[0],
        )
        for k, v in kv_caches:
            for t, dest in ((k, pool.k), (v, pool.v)):
                if not t.is_contiguous() or t.storage_offset() != 0:
                    raise TransferError("cuda_ipc: KV cache tensors must be contiguous at offset 0")
                _, args = reduce_tensor(t)
                dest.append(tensor_pb(args))
        _exports.clear()  # one engine per process: only the newest pool is served
        _exports[id(kv_caches)] = (kv_caches, pool)
        return pool


def exported_pool_id() -> str:
    """pool_id of this process's export ("" before the first Info asked for it)."""
    with _export_lock:
        return next((pool.pool_id for _, pool in _exports.values()), "")


def _device_uuid(index: int) -> str:
    return str(torch.cuda.get_device_properties(index).uuid)


def _local_device(device_uuid: str) -> int:
    """This process's index of the GPU with `device_uuid` (numberings differ between
    processes with different CUDA_VISIBLE_DEVICES)."""
    for i in range(torch.cuda.device_count()):
        if _device_uuid(i) == device_uuid:
            return i
    raise TransferError(f"cuda_ipc: GPU {device_uuid} of the peer is not visible here")


# ----- importing side (prefill worker) -----------------------------------------
@dataclass
class PeerPool:
    """A peer's KV cache mapped into this process."""

    pool_id: str
    device: torch.device
    k: list[torch.Tensor]  # per layer [num_blocks, block_size, num_kv_heads, head_dim]
    v: list[torch.Tensor]


def open_pool(pool: worker_pb2.CudaIpcPool, layout: KVLayout) -> PeerPool:
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    check_pool(pool, layout)
    index = _local_device(pool.device_uuid)
    shape = (pool.num_blocks, *layout.block_shape)
    stride = torch.empty(shape, device="meta").stride()
    dtype = layout.torch_dtype()

    def rebuild(t: worker_pb2.CudaIpcTensor) -> torch.Tensor:
        tensor: torch.Tensor = rebuild_cuda_tensor(
            torch.Tensor, shape, stride, 0, torch.UntypedStorage, dtype, index,
            t.handle, t.storage_size, t.storage_offset, False,
            t.ref_counter_handle, t.ref_counter_offset,
            t.event_handle or None, t.event_sync_required,
        )  # fmt: skip
        return tensor

    try:
        k = [rebuild(t) for t in pool.k]
        v = [rebuild(t) for t in pool.v]
    except RuntimeError as exc:
        raise TransferError(f"cuda_ipc: cannot open the peer's KV pool: {exc}") from exc
    return PeerPool(pool.pool_id, torch.device("cuda", index), k, v)


class CudaIpcSession(TransportSession):
    """One transfer: the peer's mapped pool (opened on first use) and a copy stream."""

    def __init__(self, transport: CudaIpcTransport, target: TransferTarget) -> None:
        self._transport = transport
        self._address = target.address
        self._lock = threading.Lock()
        self._peer: PeerPool | None = None
        self._closed = False

    def peer(self, layout: KVLayout) -> PeerPool:
        with self._lock:
            if self._closed:
                raise TransferError("cuda_ipc transfer closed")
            if self._peer is None:
                self._peer = self._transport.peer(self._address, layout)
            return self._peer

    def close(self, completed: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if not completed:
                # The peer may be gone or restarted: open it afresh next time.
                self._transport.forget(self._address)
            self._peer = None


class CudaIpcTransport(KVTransport):
    name = "cuda_ipc"

    def __init__(self) -> None:
        self._peers: dict[str, PeerPool] = {}
        self._lock = threading.Lock()
        self._streams: dict[int, torch.cuda.Stream] = {}

    def available(self) -> bool:
        return torch.cuda.is_available()

    def open_session(self, target: TransferTarget, layout: KVLayout) -> CudaIpcSession:
        return CudaIpcSession(self, target)

    def peer(self, address: str, layout: KVLayout) -> PeerPool:
        """The KV pool of the worker at `address`, mapped here (cached per address)."""
        with self._lock:
            cached = self._peers.get(address)
            if cached is not None:
                return cached
            pool = _fetch_pool(address)
            peer = self._peers[address] = open_pool(pool, layout)
            log.info("cuda_ipc: mapped the KV pool of %s (%s)", address, pool.pool_id)
            return peer

    def forget(self, address: str) -> None:
        with self._lock:
            self._peers.pop(address, None)

    def encode(
        self, session: TransportSession, chunk: ChunkLike, target: TransferTarget, layout: KVLayout
    ) -> list[bytes]:
        assert isinstance(session, CudaIpcSession)
        n = int(chunk.k.shape[0])
        if chunk.first_block < target.skip_blocks or chunk.first_block + n > len(target.block_ids):
            raise TransferError(
                f"chunk blocks [{chunk.first_block}, {chunk.first_block + n}) outside the "
                f"shipped range [{target.skip_blocks}, {len(target.block_ids)})"
            )
        if chunk.k.device.type != "cuda":
            raise TransferError(f"cuda_ipc: chunk is on {chunk.k.device}, not a CUDA device")
        peer = session.peer(layout)
        dst_ids = target.block_ids[chunk.first_block : chunk.first_block + n]
        self._copy(peer, chunk, dst_ids)
        return [
            worker_pb2.KVChunk(
                request_id=target.request_id,
                layer=chunk.layer,
                first_block=chunk.first_block,
                num_blocks=n,
                dtype=layout.dtype,
                cuda_ipc=worker_pb2.CudaIpcChunk(pool_id=peer.pool_id),
            ).SerializeToString()
        ]

    def _copy(self, peer: PeerPool, chunk: ChunkLike, dst_ids: Sequence[int]) -> None:
        """Copy the chunk into the peer's blocks and wait until it is complete.

        Measured on an H100 (bench/pd_single_gpu.py): these copies into another
        process's memory ran at 168 GB/s, 11% of the in-process copy rate. A
        plain copy_ of contiguous runs becomes a cudaMemcpy, which for memory
        mapped from another process appears to take the copy-engine path
        rather than an SM kernel; an SM copy (e.g. index_copy_, used below for
        scattered ids) is the next thing to measure."""
        src_dev = chunk.k.device
        stream = self._stream(src_dev)
        # Order after the engine made the chunk, and after nothing else.
        produced = getattr(chunk, "ready", None)
        if produced is None:
            produced = torch.cuda.Event()
            produced.record(torch.cuda.current_stream(src_dev))
        stream.wait_event(produced)
        with torch.cuda.device(src_dev), torch.cuda.stream(stream):
            dst_k, dst_v = peer.k[chunk.layer], peer.v[chunk.layer]
            runs = block_runs(dst_ids)
            if len(runs) > 4 and peer.device == src_dev:
                idx = torch.tensor(dst_ids, dtype=torch.int64).to(src_dev, non_blocking=True)
                dst_k.index_copy_(0, idx, chunk.k)
                dst_v.index_copy_(0, idx, chunk.v)
            else:
                for src, dst, count in runs:
                    dst_k[dst : dst + count].copy_(chunk.k[src : src + count], non_blocking=True)
                    dst_v[dst : dst + count].copy_(chunk.v[src : src + count], non_blocking=True)
            done = torch.cuda.Event()
            done.record(stream)
        done.synchronize()

    def _stream(self, device: torch.device) -> torch.cuda.Stream:
        index = device.index if device.index is not None else torch.cuda.current_device()
        with self._lock:
            stream = self._streams.get(index)
            if stream is None:
                stream = self._streams[index] = torch.cuda.Stream(device=index)
            return stream

    def open_receiver(self, layout: KVLayout) -> KVReceiver:
        return _CudaIpcReceiver(layout)


def _fetch_pool(address: str) -> worker_pb2.CudaIpcPool:
    """The peer's export, from its Info (a blocking call: runs in a worker thread)."""
    import grpc

    from tandem.worker.kv_transfer_peers import CHANNEL_OPTIONS

    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        try:
            info = stub.Info(worker_pb2.InfoRequest(), timeout=HANDSHAKE_DEADLINE_S)
        except grpc.RpcError as exc:
            raise TransferError(f"cuda_ipc: Info of {address} failed: {exc}") from exc
    if not info.HasField("kv_cuda_ipc"):
        raise TransferError(f"cuda_ipc: {address} exports no KV pool")
    return info.kv_cuda_ipc


class _CudaIpcReceiver(KVReceiver):
    """The bytes are already in place: hand the engine an empty chunk, so that its
    import checks the reservation and layer and copies nothing."""

    def __init__(self, layout: KVLayout) -> None:
        self._layout = layout
        self._empty = torch.empty((0, *layout.block_shape), dtype=layout.torch_dtype())

    def decode(self, msg: worker_pb2.KVChunk) -> KVChunk:
        check_message(msg, self._layout)
        mine = exported_pool_id()
        if not mine or msg.cuda_ipc.pool_id != mine:
            raise BadKVMessage(
                f"KVChunk.cuda_ipc.pool_id: {msg.cuda_ipc.pool_id!r} is not this worker's "
                f"KV pool ({mine or 'none exported'})"
            )
        return KVChunk(msg.request_id, msg.layer, msg.first_block, self._empty, self._empty)


TRANSPORT = CudaIpcTransport()
