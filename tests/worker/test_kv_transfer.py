"""KV transports with plain tensors: a real PushKV server on loopback whose
import function records chunks (no engine), senders fed from another thread
as the engine thread would."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import torch
from prometheus_client import REGISTRY

from tandem.rpc.v1 import worker_pb2, worker_pb2_grpc
from tandem.worker import kv_transfer as kt
from tandem.worker.kv_transfer import (
    Endpoint,
    KVLayout,
    NoCommonTransport,
    TransferError,
    TransferTarget,
    load_transport,
    piece_ranges,
    select_transport,
)
from tandem.worker.kv_transfer_peers import CHANNEL_OPTIONS, PeerChannels
from tandem.worker.kv_transfer_receiver import receive
from tandem.worker.kv_transfer_segments import (
    PREFIX,
    ReceiverMaps,
    SegmentPool,
    segment_name,
    sweep_stale_segments,
)
from tandem.worker.kv_transfer_sender import KVSender
from tandem.worker.kv_transport_shm import segment_offsets
from tandem.worker.outputs import KVChunk

LAYOUT = KVLayout(num_layers=3, block_size=4, num_kv_heads=2, head_dim=8, dtype="float32")


# ----- pure functions ------------------------------------------------------
@pytest.mark.parametrize(
    ("sender", "receiver", "requested", "expected"),
    [
        (("shm", "grpc"), ("shm", "grpc"), "", "shm"),  # same host: fastest shared
        (("grpc",), ("shm", "grpc"), "", "grpc"),  # sender lacks shm
        (("shm", "grpc"), ("grpc",), "", "grpc"),  # receiver lacks shm
        (("shm", "grpc"), ("shm", "grpc"), "grpc", "grpc"),  # explicit request wins
        (("cuda_ipc", "shm", "grpc"), ("cuda_ipc", "shm", "grpc"), "", "cuda_ipc"),
        (("nccl", "shm", "grpc"), ("nccl", "grpc"), "", "nccl"),
    ],
)
def test_select_transport_same_host(sender, receiver, requested, expected) -> None:
    assert select_transport(Endpoint(sender, "h1"), Endpoint(receiver, "h1"), requested) == expected


@pytest.mark.parametrize(
    ("sender", "receiver", "expected"),
    [
        (("shm", "grpc"), ("shm", "grpc"), "grpc"),  # shm needs one host
        (("cuda_ipc", "nccl", "grpc"), ("cuda_ipc", "nccl", "grpc"), "nccl"),
    ],
)
def test_select_transport_across_hosts(sender, receiver, expected) -> None:
    assert select_transport(Endpoint(sender, "h1"), Endpoint(receiver, "h2")) == expected


@pytest.mark.parametrize(
    ("sender", "receiver", "sh", "rh", "requested"),
    [
        (("shm",), ("grpc",), "h", "h", ""),  # nothing shared
        (("shm", "grpc"), ("shm", "grpc"), "h1", "h2", "shm"),  # shm asked across hosts
        (("shm", "grpc"), ("shm", "grpc"), "", "", "shm"),  # unknown hosts are not "same"
    ],
)
def test_select_transport_refuses(sender, receiver, sh, rh, requested) -> None:
    with pytest.raises(NoCommonTransport):
        select_transport(Endpoint(sender, sh), Endpoint(receiver, rh), requested)


@pytest.mark.parametrize(
    ("n", "per", "expected"),
    [(0, 3, []), (1, 3, [(0, 1)]), (3, 3, [(0, 3)]), (7, 3, [(0, 3), (3, 3), (6, 1)])],
)
def test_piece_ranges(n, per, expected) -> None:
    assert piece_ranges(n, per) == expected


def test_layout_sizes() -> None:
    llama = KVLayout(num_layers=32, block_size=16, num_kv_heads=8, head_dim=128, dtype="bfloat16")
    assert llama.block_bytes == 16 * 8 * 128 * 2
    assert llama.blocks_per_piece() == 64  # 64 blocks of K+V = 4 MiB
    with pytest.raises(ValueError, match="dtype"):
        KVLayout(1, 16, 1, 8, "int7")


def test_segment_offsets_tile_the_segment_without_overlap() -> None:
    n = 5
    starts = sorted(
        off
        for layer in range(LAYOUT.num_layers)
        for i in range(n)
        for off in segment_offsets(LAYOUT, n, layer, i)
    )
    assert starts == [i * LAYOUT.block_bytes for i in range(2 * LAYOUT.num_layers * n)]


def test_target_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="skip_blocks"):
        TransferTarget("a:1", "r", (1, 2), skip_blocks=3)
    with pytest.raises(ValueError, match="address"):
        TransferTarget("", "r", (1,), 0)


# ----- loopback server -------------------------------------------------------
@pytest.fixture(autouse=True)
def _empty_shm_pools():
    """Each test starts and ends with no pooled segments or cached mappings."""
    shm = load_transport("shm")
    shm.pool.clear()
    shm.maps.clear()
    yield
    shm.pool.clear()
    shm.maps.clear()


class _Recorder(worker_pb2_grpc.WorkerServiceServicer):
    """PushKV only; imports into a dict keyed by (request, layer, block index)."""

    def __init__(self, fail_on_layer: int | None = None) -> None:
        self.blocks: dict[tuple[str, int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.fail_on_layer = fail_on_layer

    def import_kv(self, chunk: KVChunk) -> None:
        if chunk.layer == self.fail_on_layer:
            raise TransferError("injected failure")
        for i in range(chunk.k.shape[0]):
            key = (chunk.request_id, chunk.layer, chunk.first_block + i)
            self.blocks[key] = (chunk.k[i].clone(), chunk.v[i].clone())

    async def PushKV(
        self, request_iterator: AsyncIterator[worker_pb2.KVChunk], context: grpc.aio.ServicerContext
    ) -> worker_pb2.PushKVResponse:
        try:
            return await receive(request_iterator, LAYOUT, ("shm", "grpc"), self.import_kv)
        except TransferError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # unreachable: abort raises


async def _serve(servicer: _Recorder) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def _chunks(layout: KVLayout, num_blocks: int, skip: int, per_chunk: int) -> list[KVChunk]:
    """Layer-major chunks of random KV, as the engine emits them."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for layer in range(layout.num_layers):
        for start in range(skip, num_blocks, per_chunk):
            n = min(per_chunk, num_blocks - start)
            shape = (n, *layout.block_shape)
            k = torch.randn(shape, generator=gen).to(layout.torch_dtype())
            v = torch.randn(shape, generator=gen).to(layout.torch_dtype())
            out.append(KVChunk("prefill-side-id", layer, start, k, v))
    return out


def _segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob(f"{PREFIX}*")}


async def _ship(transport: str, chunks: list[KVChunk], target: TransferTarget, peers, streams=3):
    sender = KVSender(
        load_transport(transport), target, LAYOUT, peers.push_kv(target.address, streams)
    )
    # The engine thread calls the sink; do the same from a plain thread.
    feeder = threading.Thread(target=lambda: [sender.submit(c) for c in chunks])
    feeder.start()
    await asyncio.to_thread(feeder.join)
    return await sender.finish()


def _metric(name: str, transport: str) -> float:
    return REGISTRY.get_sample_value(name, {"transport": transport}) or 0.0


@pytest.mark.parametrize("transport", ["grpc", "shm"])
async def test_round_trip_delivers_every_block_exactly(transport: str) -> None:
    recorder = _Recorder()
    server, address = await _serve(recorder)
    peers = PeerChannels()
    before = _segments()
    bytes_before = _metric("tandem_kv_transfer_bytes_total", transport)
    try:
        num_blocks, skip = 7, 2
        target = TransferTarget(address, "decode-id", tuple(range(100, 107)), skip, transport)
        chunks = _chunks(LAYOUT, num_blocks, skip, per_chunk=2)
        stats = await _ship(transport, chunks, target, peers)
    finally:
        await peers.close()
        await server.stop(None)
    expected_bytes = LAYOUT.num_layers * (num_blocks - skip) * 2 * LAYOUT.block_bytes
    assert stats.bytes == expected_bytes and stats.transport == transport
    assert len(recorder.blocks) == LAYOUT.num_layers * (num_blocks - skip)
    for c in chunks:
        for i in range(c.k.shape[0]):
            k, v = recorder.blocks[("decode-id", c.layer, c.first_block + i)]
            assert torch.equal(k, c.k[i]) and torch.equal(v, c.v[i])
    assert _metric("tandem_kv_transfer_bytes_total", transport) - bytes_before == expected_bytes
    # A completed transfer's segment waits in the sender's pool for the next one...
    pool = load_transport("shm").pool
    assert _segments() - before == set(pool.idle_names())
    assert len(pool.idle_names()) == (1 if transport == "shm" else 0)
    # ... and goes when the pool is emptied (shutdown).
    pool.clear()
    load_transport("shm").maps.clear()
    assert _segments() == before


async def test_completed_transfers_reuse_one_segment() -> None:
    recorder = _Recorder()
    server, address = await _serve(recorder)
    peers = PeerChannels()
    pool = load_transport("shm").pool
    names = []
    try:
        for rid in ("one", "two", "three"):
            target = TransferTarget(address, rid, tuple(range(4)), 0, "shm")
            await _ship("shm", _chunks(LAYOUT, 4, 0, 4), target, peers)
            names.append(tuple(pool.idle_names()))
    finally:
        await peers.close()
        await server.stop(None)
    assert len(set(names)) == 1 and len(names[0]) == 1
    assert {k[0] for k in recorder.blocks} == {"one", "two", "three"}
    # The receiver kept its mapping of the reused segment.
    assert load_transport("shm").maps.names() == list(names[0])


def test_receiver_drops_mappings_of_removed_segments(tmp_path: Path) -> None:
    pool = SegmentPool(tmp_path)
    maps = ReceiverMaps(tmp_path, max_entries=2)
    segs = [pool.take(1 << 20) for _ in range(3)]
    held = maps.acquire(segs[0].path.name)
    maps.release(held)
    assert maps.names() == [segs[0].path.name]
    pool.give_back(segs[0], reuse=False)  # the sender removes it
    held = maps.acquire(segs[1].path.name)
    assert maps.names() == [segs[1].path.name]  # the removed one is gone
    in_use = maps.acquire(segs[2].path.name)
    maps.acquire(segs[1].path.name)
    # Over the limit, the least recently used mapping goes, but one in use stays readable.
    extra = pool.take(1 << 20)
    maps.acquire(extra.path.name)
    assert segs[2].path.name not in maps.names()
    assert in_use.view(0, LAYOUT, 1).shape == (1, *LAYOUT.block_shape)
    maps.release(in_use)
    maps.clear()
    pool.clear()
    for m in (segs[1], segs[2], extra):
        pool.give_back(m, reuse=False)
    assert not list(tmp_path.iterdir())


async def test_grpc_pieces_stay_under_the_message_limit() -> None:
    big = KVLayout(num_layers=1, block_size=16, num_kv_heads=8, head_dim=128, dtype="bfloat16")
    chunk = KVChunk(
        "r",
        0,
        0,
        torch.ones(150, *big.block_shape, dtype=torch.bfloat16),
        torch.zeros(150, *big.block_shape, dtype=torch.bfloat16),
    )
    target = TransferTarget("x:1", "d", tuple(range(150)), 0)
    grpc_transport = load_transport("grpc")
    wire = grpc_transport.encode(grpc_transport.open_session(target, big), chunk, target, big)
    msgs = [worker_pb2.KVChunk.FromString(w) for w in wire]
    assert [m.first_block for m in msgs] == [0, 64, 128]
    assert all(len(m.k) + len(m.v) <= kt.MAX_PIECE_BYTES for m in msgs)
    assert sum(m.num_blocks for m in msgs) == 150


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300, 4 << 20])
def test_fast_wire_encoding_equals_protobuf(size: int) -> None:
    from tandem.worker.kv_transport_grpc import encode_chunk

    k, v = bytes(range(256)) * (size // 256) + b"k" * (size % 256), b"v" * (size // 2)
    header = worker_pb2.KVChunk(
        request_id="r", layer=3, first_block=7, num_blocks=2, dtype="float32"
    )
    full = worker_pb2.KVChunk()
    full.CopyFrom(header)
    full.k, full.v = k, v
    fast = encode_chunk(header, memoryview(k), memoryview(v))
    assert worker_pb2.KVChunk.FromString(fast) == full


@pytest.mark.parametrize("transport", ["grpc", "shm"])
async def test_receiver_failure_fails_the_transfer_and_cleans_up(transport: str) -> None:
    recorder = _Recorder(fail_on_layer=1)
    server, address = await _serve(recorder)
    peers = PeerChannels()
    before = _segments()
    try:
        target = TransferTarget(address, "d", tuple(range(4)), 0, transport)
        with pytest.raises(TransferError, match="injected failure"):
            await _ship(transport, _chunks(LAYOUT, 4, 0, 4), target, peers, streams=1)
    finally:
        await peers.close()
        await server.stop(None)
    assert _segments() == before


async def test_abort_removes_the_shm_segment() -> None:
    peers = PeerChannels()
    before = _segments()
    # Nobody listens: the abort must still clean up at once.
    target = TransferTarget("127.0.0.1:1", "d", tuple(range(4)), 0, "shm")
    sender = KVSender(load_transport("shm"), target, LAYOUT, peers.push_kv(target.address, 2))
    assert len(_segments() - before) == 1
    sender.submit(_chunks(LAYOUT, 4, 0, 4)[0])
    await sender.abort()
    await peers.close()
    assert _segments() == before


def test_sweep_removes_only_segments_of_dead_processes(tmp_path: Path) -> None:
    ns = segment_name().split("-")[2]
    dead = tmp_path / f"{PREFIX}{ns}-999999999-{'0' * 16}"
    mine = tmp_path / segment_name()
    other = tmp_path / "unrelated"
    for p in (dead, mine, other):
        p.write_bytes(b"x")
    assert sweep_stale_segments(tmp_path) == [dead.name]
    assert not dead.exists() and mine.exists() and other.exists()


async def test_receiver_rejects_foreign_segment_names() -> None:
    receiver = load_transport("shm").open_receiver(LAYOUT)
    msg = worker_pb2.KVChunk(
        request_id="d",
        layer=0,
        first_block=0,
        num_blocks=1,
        dtype="float32",
        shm=worker_pb2.ShmRegion(segment="../etc/passwd"),
    )
    with pytest.raises(TransferError, match="segment"):
        receiver.decode(msg)
