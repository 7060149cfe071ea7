"""KV transfer throughput per transport, between two processes on this host.

    python bench/kv_transfer.py [--reps 3] [--out bench/results/kv_transfer-HOST.json]

A receiver process runs a real PushKV server whose import copies each chunk
into a preallocated KV pool (as the decode engine does); this process ships a
request's KV with the real KVSender, layer by layer, as the prefill engine's
sink would. Shapes: a 4096-token prompt of a Llama-3-8B-shaped model (32 layers
x 8 KV heads x 128 dim, bf16: 512 MiB) and of the tiny test model (4 x 2 x 16,
fp32). Reported: GB/s from opening the transfer to the last chunk imported,
against two ceilings measured in the same run: the same bytes through one
in-process memcpy (any host-memory transport) and as raw 4 MiB messages
through one gRPC stream that drops them (the gRPC transport).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import socket
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Shape:
    name: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    tokens: int
    block_size: int = 16
    tokens_per_chunk: int = 2048  # the engine's default step budget: one chunk per layer per step

    @property
    def num_blocks(self) -> int:
        return -(-self.tokens // self.block_size)

    @property
    def total_bytes(self) -> int:
        item = torch.tensor([], dtype=getattr(torch, self.dtype)).element_size()
        per_block = self.block_size * self.num_kv_heads * self.head_dim * item
        return 2 * self.num_layers * self.num_blocks * per_block


SHAPES = (
    Shape(
        "llama3-8b-4k", num_layers=32, num_kv_heads=8, head_dim=128, dtype="bfloat16", tokens=4096
    ),
    Shape("tiny-llama-2k", num_layers=4, num_kv_heads=2, head_dim=16, dtype="float32", tokens=2048),
)
CONFIGS = (("grpc", 1), ("grpc", 4), ("shm", 1), ("shm", 4))


def _layout(shape: Shape):  # type: ignore[no-untyped-def]
    from tandem.worker.kv_transfer import KVLayout

    return KVLayout(
        shape.num_layers, shape.block_size, shape.num_kv_heads, shape.head_dim, shape.dtype
    )


# ----- receiver process ------------------------------------------------------------
def _receiver_main(shape: Shape, port_out: mp.Queue) -> None:  # type: ignore[type-arg]
    torch.set_num_threads(1)
    asyncio.run(_receiver(shape, port_out))


async def _receiver(shape: Shape, port_out: mp.Queue) -> None:  # type: ignore[type-arg]
    import grpc

    from tandem.rpc.v1 import worker_pb2_grpc
    from tandem.worker.kv_transfer_peers import CHANNEL_OPTIONS
    from tandem.worker.kv_transfer_receiver import receive

    layout = _layout(shape)
    dtype = layout.torch_dtype()
    # [layers, blocks, block_size, kv_heads, head_dim], like the engine's pool
    pool_k = torch.zeros(shape.num_layers, shape.num_blocks, *layout.block_shape, dtype=dtype)
    pool_v = torch.zeros_like(pool_k)

    def import_kv(chunk) -> None:  # type: ignore[no-untyped-def]
        n = chunk.k.shape[0]
        pool_k[chunk.layer, chunk.first_block : chunk.first_block + n].copy_(chunk.k)
        pool_v[chunk.layer, chunk.first_block : chunk.first_block + n].copy_(chunk.v)

    class Servicer(worker_pb2_grpc.WorkerServiceServicer):
        async def PushKV(self, request_iterator, context):  # type: ignore[no-untyped-def]
            return await receive(request_iterator, layout, ("shm", "grpc"), import_kv)

    async def sink(request_iterator, context) -> bytes:  # type: ignore[no-untyped-def]
        # The gRPC ceiling: raw byte messages, counted and dropped.
        return str(sum([len(m) async for m in request_iterator])).encode()

    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(Servicer(), server)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "bench.Sink", {"Push": grpc.stream_unary_rpc_method_handler(sink)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_out.put(port)
    await server.wait_for_termination()


# ----- sender -----------------------------------------------------------------------
def _chunks(shape: Shape) -> list:  # type: ignore[type-arg]
    from tandem.worker.outputs import KVChunk

    layout = _layout(shape)
    per = shape.tokens_per_chunk // shape.block_size
    out = []
    for start in range(0, shape.num_blocks, per):
        n = min(per, shape.num_blocks - start)
        for layer in range(shape.num_layers):
            k = torch.randn(n, *layout.block_shape).to(layout.torch_dtype())
            out.append(KVChunk("bench", layer, start, k, k.clone()))
    return out


async def _ship(
    shape: Shape, address: str, transport: str, streams: int, chunks: list, reps: int
) -> list[float]:  # type: ignore[type-arg]
    """One warm-up transfer, then `reps` timed ones over the same channels (as a
    worker reuses its channels to a peer). Timed: from opening the transfer
    (segment creation included) to the last chunk imported."""
    from tandem.worker.kv_transfer import TransferTarget, load_transport
    from tandem.worker.kv_transfer_peers import PeerChannels
    from tandem.worker.kv_transfer_sender import KVSender

    peers = PeerChannels()
    times = []
    try:
        for _ in range(reps + 1):
            pushers = peers.push_kv(address, streams)
            target = TransferTarget(address, "bench", tuple(range(shape.num_blocks)), 0, transport)
            t0 = time.perf_counter()
            sender = KVSender(load_transport(transport), target, _layout(shape), pushers)
            feeder = threading.Thread(target=lambda s=sender: [s.submit(c) for c in chunks])
            feeder.start()
            await asyncio.to_thread(feeder.join)
            stats = await sender.finish()
            times.append(time.perf_counter() - t0)
            assert stats.bytes == shape.total_bytes, (stats.bytes, shape.total_bytes)
    finally:
        await peers.close()
    return times[1:]


async def _raw_grpc(shape: Shape, address: str, reps: int) -> list[float]:
    """Seconds to push the same bytes as 4 MiB raw messages through one gRPC
    stream that does nothing with them: the ceiling for the gRPC transport."""
    import grpc

    from tandem.worker.kv_transfer import MAX_PIECE_BYTES
    from tandem.worker.kv_transfer_peers import CHANNEL_OPTIONS

    payload = b"x" * MAX_PIECE_BYTES
    count = -(-shape.total_bytes // MAX_PIECE_BYTES)

    async def messages():  # type: ignore[no-untyped-def]
        for i in range(count):
            last = shape.total_bytes - i * MAX_PIECE_BYTES
            yield payload if last >= MAX_PIECE_BYTES else payload[:last]

    times = []
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        push = channel.stream_unary("/bench.Sink/Push")
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            got = await push(messages(), timeout=120)
            times.append(time.perf_counter() - t0)
            assert int(got) == shape.total_bytes
    return times[1:]


def _memcpy_seconds(chunks: list) -> float:  # type: ignore[type-arg]
    # zeros: the pages are touched before timing (first-touch faults are not memcpy)
    dst = [(torch.zeros_like(c.k), torch.zeros_like(c.v)) for c in chunks]
    t0 = time.perf_counter()
    for c, (k, v) in zip(chunks, dst, strict=True):
        k.copy_(c.k)
        v.copy_(c.v)
    return time.perf_counter() - t0


def _bench_shape(shape: Shape, reps: int) -> list[dict]:  # type: ignore[type-arg]
    ctx = mp.get_context("spawn")
    port_q: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    proc = ctx.Process(target=_receiver_main, args=(shape, port_q), daemon=True)
    proc.start()
    rows = []
    try:
        address = f"127.0.0.1:{port_q.get(timeout=120)}"
        chunks = _chunks(shape)
        gb = shape.total_bytes / 1e9
        memcpy = statistics.median(_memcpy_seconds(chunks) for _ in range(reps))
        rows.append(_row(shape, "memcpy (in-process)", 0, memcpy, gb))
        raw = statistics.median(asyncio.run(_raw_grpc(shape, address, reps)))
        rows.append(_row(shape, "raw gRPC bytes", 1, raw, gb))
        for transport, streams in CONFIGS:
            times = asyncio.run(_ship(shape, address, transport, streams, chunks, reps))
            row = _row(shape, transport, streams, statistics.median(times), gb)
            row["vs_memcpy"] = round(row["gb_per_s"] / rows[0]["gb_per_s"], 3)
            row["vs_raw_grpc"] = round(row["gb_per_s"] / rows[1]["gb_per_s"], 3)
            rows.append(row)
    finally:
        proc.terminate()
        proc.join(10)
    return rows


def _row(shape: Shape, transport: str, streams: int, seconds: float, gb: float) -> dict:  # type: ignore[type-arg]
    return {
        "shape": shape.name,
        "transport": transport,
        "streams": streams,
        "bytes": shape.total_bytes,
        "seconds": round(seconds, 5),
        "gb_per_s": round(gb / seconds, 3),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "grpcio", "protobuf", "tandem-serve"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    # One copy thread per process: the figures then measure the transports, not how
    # torch's intra-op pool fares on a (shared, busy) host.
    torch.set_num_threads(1)
    host = socket.gethostname()
    load_at_start = os.getloadavg()
    rows = [row for shape in SHAPES for row in _bench_shape(shape, args.reps)]
    print(
        f"{'shape':<16} {'transport':<20} {'streams':>7} {'MiB':>8} {'seconds':>9} "
        f"{'GB/s':>7} {'vs memcpy':>9} {'vs raw gRPC':>11}"
    )
    for r in rows:
        vs = f"{r['vs_memcpy']:.3f}" if "vs_memcpy" in r else ""
        vs_raw = f"{r['vs_raw_grpc']:.3f}" if "vs_raw_grpc" in r else ""
        print(
            f"{r['shape']:<16} {r['transport']:<20} {r['streams']:>7} {r['bytes'] / 2**20:>8.1f} "
            f"{r['seconds']:>9.4f} {r['gb_per_s']:>7.3f} {vs:>9} {vs_raw:>11}"
        )
    result = {
        "benchmark": "kv_transfer",
        "host": host,
        "device": f"cpu: {_cpu_name()} ({os.cpu_count()} cores)",
        "load_average_at_start": load_at_start,
        "versions": _versions(),
        "method": "two processes on one host; real KVSender -> PushKV -> receive -> copy into a KV pool",
        "shapes": [asdict(s) for s in SHAPES],
        "figures": rows,
    }
    out = args.out or ROOT / "bench" / "results" / f"kv_transfer-{host}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
