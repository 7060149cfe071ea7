"""The cuda_ipc KV transport: its pure parts on any machine; on a GPU, real
`tandem worker` processes (a prefill and a decode worker on one GPU) whose
KV travels by CUDA IPC and gives exactly the tokens of a colocated worker."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from tandem.rpc.v1 import worker_pb2, worker_pb2_grpc
from tandem.worker.errors import UnknownRequest
from tandem.worker.kv_transfer import (
    BadKVMessage,
    Endpoint,
    KVLayout,
    NoCommonTransport,
    TransferTarget,
    select_transport,
    transport_of,
)
from tandem.worker.kv_transport_cuda_ipc import (
    CudaIpcSession,
    block_runs,
    check_pool,
    tensor_pb,
)

LAYOUT = KVLayout(num_layers=2, block_size=4, num_kv_heads=2, head_dim=8, dtype="float32")
ROOT = Path(__file__).resolve().parents[2]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# ----- pure parts ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ids", "runs"),
    [
        ([], []),
        ([7], [(0, 7, 1)]),
        ([3, 4, 5, 6], [(0, 3, 4)]),
        ([3, 4, 9, 10, 2], [(0, 3, 2), (2, 9, 2), (4, 2, 1)]),
        ([5, 4, 3], [(0, 5, 1), (1, 4, 1), (2, 3, 1)]),  # descending ids are not a run
    ],
)
def test_block_runs(ids: list[int], runs: list[tuple[int, int, int]]) -> None:
    assert block_runs(ids) == runs


def test_tensor_pb_keeps_every_sharing_field() -> None:
    args = (
        torch.Tensor, (4, 4, 2, 8), (64, 16, 8, 1), 0, torch.UntypedStorage, torch.float32, 0,
        b"handle", 4096, 512, False, b"/torch_1_2", 3, b"event", True,
    )  # fmt: skip
    pb = tensor_pb(args)
    assert (pb.handle, pb.storage_size, pb.storage_offset) == (b"handle", 4096, 512)
    assert (pb.ref_counter_handle, pb.ref_counter_offset) == (b"/torch_1_2", 3)
    assert (pb.event_handle, pb.event_sync_required) == (b"event", True)
    assert tensor_pb((*args[:13], None, False)).event_handle == b""


def _pool(layers: int = 2, blocks: int = 4, size: int | None = None) -> worker_pb2.CudaIpcPool:
    size = blocks * LAYOUT.block_bytes if size is None else size
    t = worker_pb2.CudaIpcTensor(handle=b"h", storage_size=size)
    return worker_pb2.CudaIpcPool(
        pool_id="p1", device_uuid="GPU-x", num_blocks=blocks, k=[t] * layers, v=[t] * layers
    )


@pytest.mark.parametrize(
    ("pool", "field"),
    [
        (worker_pb2.CudaIpcPool(), "pool_id"),
        (_pool(layers=3), "CudaIpcPool.k"),
        (_pool(size=LAYOUT.block_bytes), r"CudaIpcPool.k\[0\]"),
    ],
)
def test_check_pool_names_the_bad_field(pool: worker_pb2.CudaIpcPool, field: str) -> None:
    with pytest.raises(BadKVMessage, match=field):
        check_pool(pool, LAYOUT)


def test_check_pool_accepts_a_fitting_export() -> None:
    check_pool(_pool(), LAYOUT)


@pytest.mark.parametrize(
    ("sender", "receiver", "same_host", "expected"),
    [
        (("cuda_ipc", "shm", "grpc"), ("cuda_ipc", "shm", "grpc"), True, "cuda_ipc"),
        (("cuda_ipc", "shm", "grpc"), ("shm", "grpc"), True, "shm"),  # a CPU decode worker
        (("cuda_ipc", "grpc"), ("cuda_ipc", "grpc"), False, "grpc"),  # other hosts
        (("cuda_ipc", "nccl", "grpc"), ("cuda_ipc", "nccl", "grpc"), False, "nccl"),
    ],
)
def test_selection_prefers_cuda_ipc_on_one_host(sender, receiver, same_host, expected) -> None:
    host = "h1" if same_host else "h2"
    assert select_transport(Endpoint(sender, "h1"), Endpoint(receiver, host)) == expected


def test_cuda_ipc_across_hosts_is_refused_when_asked_for() -> None:
    with pytest.raises(NoCommonTransport, match="cuda_ipc"):
        select_transport(
            Endpoint(("cuda_ipc", "grpc"), "h1"), Endpoint(("cuda_ipc", "grpc"), "h2"), "cuda_ipc"
        )


def test_control_message_is_dispatched_to_cuda_ipc_and_is_small() -> None:
    msg = worker_pb2.KVChunk(
        request_id="r", layer=1, first_block=2, num_blocks=64, dtype="float32",
        cuda_ipc=worker_pb2.CudaIpcChunk(pool_id="0" * 32),
    )  # fmt: skip
    assert transport_of(msg) == "cuda_ipc"
    assert len(msg.SerializeToString()) < 64  # no payload: the blocks are already in place


def test_receiver_refuses_a_chunk_for_another_export(monkeypatch: pytest.MonkeyPatch) -> None:
    from tandem.worker import kv_transport_cuda_ipc as ipc

    receiver = ipc.TRANSPORT.open_receiver(LAYOUT)
    msg = worker_pb2.KVChunk(
        request_id="r", layer=0, first_block=0, num_blocks=2, dtype="float32",
        cuda_ipc=worker_pb2.CudaIpcChunk(pool_id="stale"),
    )  # fmt: skip
    monkeypatch.setattr(ipc, "exported_pool_id", lambda: "")
    with pytest.raises(BadKVMessage, match="none exported"):
        receiver.decode(msg)
    monkeypatch.setattr(ipc, "exported_pool_id", lambda: "current")
    with pytest.raises(BadKVMessage, match="'stale'"):
        receiver.decode(msg)
    msg.cuda_ipc.pool_id = "current"
    chunk = receiver.decode(msg)
    assert (chunk.request_id, chunk.layer, chunk.first_block, chunk.num_blocks) == ("r", 0, 0, 0)


def test_in_place_chunk_import_checks_the_reservation_and_copies_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tandem.models.tiny import write_tiny_model
    from tandem.sampling import SamplingParams
    from tandem.worker import kv_transport_cuda_ipc as ipc
    from tandem.worker.config import EngineConfig
    from tandem.worker.engine import Engine
    from tandem.worker.wire import kv_layout

    model = write_tiny_model(tmp_path / "m", seed=0)
    engine = Engine(EngineConfig(model=str(model), device="cpu", block_size=16, num_kv_blocks=16))
    layout = kv_layout(engine.model_info)
    monkeypatch.setattr(ipc, "exported_pool_id", lambda: "pool")
    receiver = ipc.TRANSPORT.open_receiver(layout)
    msg = worker_pb2.KVChunk(
        request_id="r", layer=1, first_block=0, num_blocks=2, dtype=layout.dtype,
        cuda_ipc=worker_pb2.CudaIpcChunk(pool_id="pool"),
    )  # fmt: skip
    with pytest.raises(UnknownRequest):
        engine.import_kv(receiver.decode(msg))
    engine.reserve("r", list(range(3, 40)), SamplingParams(max_tokens=2))
    before = [t.clone() for kv in engine.runner.kv_caches for t in kv]
    engine.import_kv(receiver.decode(msg))
    after = [t for kv in engine.runner.kv_caches for t in kv]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_session_closed_on_failure_forgets_the_peer() -> None:
    from tandem.worker import kv_transport_cuda_ipc as ipc

    transport = ipc.CudaIpcTransport()
    transport._peers["d:1"] = ipc.PeerPool("p", torch.device("cpu"), [], [])
    target = TransferTarget("d:1", "r", (0, 1), 0, "cuda_ipc")
    ok = transport.open_session(target, LAYOUT)
    assert isinstance(ok, CudaIpcSession)
    ok.close(completed=True)
    assert "d:1" in transport._peers  # a completed transfer keeps the mapping for the next
    transport.open_session(target, LAYOUT).close(completed=False)
    assert "d:1" not in transport._peers


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_not_available_without_cuda() -> None:
    from tandem.worker.kv_transfer import available_transports

    assert "cuda_ipc" not in available_transports()
    assert "cuda_ipc" not in available_transports(("cuda_ipc", "grpc"))


# ----- on a GPU: real worker processes ---------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(model: Path, role: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    cmd = [
        sys.executable, "-m", "tandem.cli", "worker", "--model", str(model), "--role", role,
        "--port", str(port), "--device", "cuda", "--dtype", "float32", "--num-kv-blocks", "128",
        "--kv-transports", "cuda_ipc,shm,grpc",
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
    }
    return subprocess.Popen(cmd, env=env), f"127.0.0.1:{port}"


def _wait_ready(stub: worker_pb2_grpc.WorkerServiceStub, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, "worker exited during start-up"
        try:
            stub.Health(worker_pb2.HealthRequest(), timeout=1)
            return
        except grpc.RpcError:
            time.sleep(0.5)
    raise AssertionError("worker did not start")


@pytest.fixture(scope="module")
def gpu_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple]]:
    from tandem.models.tiny import write_tiny_model

    model = write_tiny_model(tmp_path_factory.mktemp("ipc") / "tiny", seed=0)
    started = {role: _start(model, role) for role in ("both", "prefill", "decode")}
    out = {}
    try:
        for role, (proc, address) in started.items():
            channel = grpc.insecure_channel(address)
            stub = worker_pb2_grpc.WorkerServiceStub(channel)
            _wait_ready(stub, proc)
            out[role] = (proc, address, stub)
        yield out
    finally:
        for proc, _ in started.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in started.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


GREEDY = worker_pb2.SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)


def _pd(
    p, d, d_address: str, rid: str, prompt: list[int]
) -> tuple[list[int], worker_pb2.PrefillResponse]:  # type: ignore[no-untyped-def]
    res = d.Reserve(
        worker_pb2.ReserveRequest(request_id=rid, prompt_token_ids=prompt, sampling=GREEDY),
        timeout=10,
    )
    target = worker_pb2.KVTarget(
        address=d_address, request_id=rid, block_ids=res.block_ids, skip_blocks=res.skip_blocks,
        accepted_transports=res.kv_transports, host_id=res.host_id,
    )  # fmt: skip
    pre = p.Prefill(
        worker_pb2.PrefillRequest(
            request_id=rid, prompt_token_ids=prompt, sampling=GREEDY, target=target
        ),
        timeout=60,
    )
    first = list(pre.output.token_ids)
    rest = [
        t
        for c in d.Decode(
            worker_pb2.DecodeRequest(request_id=rid, first_token_id=first[0]), timeout=60
        )
        for t in c.token_ids
    ]
    return first + rest, pre


def _used(stub: worker_pb2_grpc.WorkerServiceStub) -> int:
    return int(stub.Load(worker_pb2.LoadRequest(), timeout=5).kv_blocks_used)


@pytest.mark.gpu
@needs_cuda
def test_prefill_and_decode_processes_over_cuda_ipc_match_colocated(gpu_workers) -> None:  # type: ignore[no-untyped-def]
    both = gpu_workers["both"][2]
    p, (_, d_address, d) = gpu_workers["prefill"][2], gpu_workers["decode"]
    g = torch.Generator().manual_seed(1)
    for i, n in enumerate((5, 16, 37, 300)):  # inside one block, exactly one, several, many chunks
        prompt = torch.randint(3, 1000, (n,), generator=g).tolist()
        want = [
            t
            for c in both.Generate(
                worker_pb2.GenerateRequest(
                    request_id=f"b{i}", prompt_token_ids=prompt, sampling=GREEDY
                ),
                timeout=60,
            )
            for t in c.token_ids
        ]
        got, pre = _pd(p, d, d_address, f"r{i}", prompt)
        assert pre.transport == "cuda_ipc"
        assert pre.kv_bytes == _kv_bytes(d, n)
        assert got == want, f"prompt of {n} tokens"
    assert _used(p) == 0 and _used(d) == 0


def _kv_bytes(stub: worker_pb2_grpc.WorkerServiceStub, n: int) -> int:
    """K+V bytes of every layer for an n-token prompt, from the worker's own layout."""
    m = stub.Info(worker_pb2.InfoRequest(), timeout=5).model
    item = torch.empty(0, dtype=getattr(torch, m.kv_dtype)).element_size()
    blocks = -(-n // m.block_size)
    return 2 * m.num_layers * blocks * m.block_size * m.num_kv_heads * m.head_dim * item


@pytest.mark.gpu
@needs_cuda
def test_cancelling_a_prefill_midway_frees_blocks_on_both(gpu_workers) -> None:  # type: ignore[no-untyped-def]
    p, (_, d_address, d) = gpu_workers["prefill"][2], gpu_workers["decode"]
    prompt = [3 + i % 1000 for i in range(1500)]  # long, inside the tiny vocabulary
    res = d.Reserve(
        worker_pb2.ReserveRequest(request_id="c", prompt_token_ids=prompt, sampling=GREEDY),
        timeout=10,
    )
    target = worker_pb2.KVTarget(
        address=d_address, request_id="c", block_ids=res.block_ids, transport="cuda_ipc"
    )
    call = p.Prefill.future(
        worker_pb2.PrefillRequest(
            request_id="c", prompt_token_ids=prompt, sampling=GREEDY, target=target
        ),
        timeout=60,
    )
    time.sleep(0.01)
    call.cancel()
    d.Cancel(worker_pb2.CancelRequest(request_id="c"), timeout=5)
    deadline = time.monotonic() + 10
    while (_used(p), _used(d)) != (0, 0):
        assert time.monotonic() < deadline, f"blocks still used: P {_used(p)}, D {_used(d)}"
        time.sleep(0.05)


@pytest.mark.gpu
@needs_cuda
def test_a_dead_decode_worker_does_not_take_the_prefill_worker_down(gpu_workers) -> None:  # type: ignore[no-untyped-def]
    proc, d_address, d = gpu_workers["decode"]
    p = gpu_workers["prefill"][2]
    prompt = list(range(3, 60))
    _pd(p, d, d_address, "before", prompt)  # P has mapped D's pool
    res = d.Reserve(
        worker_pb2.ReserveRequest(request_id="x", prompt_token_ids=prompt, sampling=GREEDY),
        timeout=10,
    )
    proc.kill()
    proc.wait(30)
    # The target names D's transports, so P picks cuda_ipc without asking the dead D.
    target = worker_pb2.KVTarget(
        address=d_address, request_id="x", block_ids=res.block_ids, transport="cuda_ipc",
        accepted_transports=res.kv_transports, host_id=res.host_id,
    )  # fmt: skip
    with pytest.raises(grpc.RpcError):
        p.Prefill(
            worker_pb2.PrefillRequest(
                request_id="x", prompt_token_ids=prompt, sampling=GREEDY, target=target
            ),
            timeout=30,
        )
    assert (
        p.Health(worker_pb2.HealthRequest(), timeout=5).status == worker_pb2.HealthResponse.SERVING
    )
    out = p.Prefill(
        worker_pb2.PrefillRequest(request_id="y", prompt_token_ids=prompt, sampling=GREEDY),
        timeout=30,
    )
    assert len(out.output.token_ids) == 1
