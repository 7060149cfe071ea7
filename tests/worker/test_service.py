"""WorkerService over real gRPC on loopback, around real AsyncEngines on the
tiny model: colocated and disaggregated paths, every KV transport, error
codes, and that cancelling frees blocks."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tandem.rpc.v1 import worker_pb2, worker_pb2_grpc
from tandem.sampling import InvalidRequest, SamplingParams
from tandem.worker import wire
from tandem.worker.async_engine import AsyncEngine
from tandem.worker.config import EngineConfig
from tandem.worker.errors import Draining, NoCapacity, UnknownRequest, WrongRole
from tandem.worker.kv_transfer import (
    BadKVMessage,
    NoCommonTransport,
    TransferError,
    load_transport,
)
from tandem.worker.kv_transfer_peers import CHANNEL_OPTIONS, PeerChannels
from tandem.worker.kv_transfer_segments import PREFIX
from tandem.worker.service import ServiceSettings, WorkerService, start_server
from tandem.worker.status import status_for

PROMPT = [5, 17, 300, 42, 7, 99, 123, 64, 256, 18, 33, 71, 12, 14, 15, 16, 200, 201, 9]  # 19 tokens
GREEDY = worker_pb2.SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tandem.models.tiny import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@dataclass
class Worker:
    engine: AsyncEngine
    service: WorkerService
    address: str
    stub: worker_pb2_grpc.WorkerServiceStub


@contextlib.asynccontextmanager
async def running_worker(
    model: Path,
    role: str = "both",
    transports: tuple[str, ...] = ("shm", "grpc"),
    host: str = "host-a",
    num_kv_blocks: int = 64,
    max_num_batched_tokens: int = 2048,
) -> AsyncIterator[Worker]:
    config = EngineConfig(
        model=str(model),
        device="cpu",
        role=role,  # type: ignore[arg-type]
        block_size=16,
        num_kv_blocks=num_kv_blocks,
        max_num_batched_tokens=max_num_batched_tokens,
    )
    engine = AsyncEngine.start(config)
    peers = PeerChannels()
    service = WorkerService(engine, ServiceSettings(transports, host, kv_streams=2), peers)
    server, port = await start_server(service, "127.0.0.1", 0)
    address = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    try:
        yield Worker(engine, service, address, worker_pb2_grpc.WorkerServiceStub(channel))
    finally:
        await channel.close()
        await server.stop(None)
        await peers.close()
        await engine.shutdown()


async def _collect(call: grpc.aio.UnaryStreamCall) -> tuple[list[int], str]:
    tokens: list[int] = []
    reason = ""
    async for chunk in call:
        tokens.extend(chunk.token_ids)
        if chunk.finished:
            reason = chunk.finish_reason
    return tokens, reason


async def _used_blocks(w: Worker) -> int:
    return (await w.stub.Load(worker_pb2.LoadRequest(), timeout=5)).kv_blocks_used


async def _wait_blocks_free(w: Worker, within_s: float = 1.0) -> float:
    t0 = time.monotonic()
    while await _used_blocks(w) != 0:
        if time.monotonic() - t0 > within_s:
            raise AssertionError(f"{await _used_blocks(w)} blocks still used after {within_s}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


async def _disaggregated(p: Worker, d: Worker, rid: str, transport: str = ""):
    res = await d.stub.Reserve(
        worker_pb2.ReserveRequest(request_id=rid, prompt_token_ids=PROMPT, sampling=GREEDY),
        timeout=5,
    )
    target = worker_pb2.KVTarget(
        address=d.address,
        request_id=rid,
        block_ids=res.block_ids,
        skip_blocks=res.skip_blocks,
        transport=transport,
        accepted_transports=res.kv_transports,
        host_id=res.host_id,
    )
    pre = await p.stub.Prefill(
        worker_pb2.PrefillRequest(
            request_id=rid, prompt_token_ids=PROMPT, sampling=GREEDY, target=target
        ),
        timeout=30,
    )
    first = list(pre.output.token_ids)
    assert len(first) == 1 and pre.output.finish_reason == "prefilled"
    rest, reason = await _collect(
        d.stub.Decode(worker_pb2.DecodeRequest(request_id=rid, first_token_id=first[0]), timeout=30)
    )
    return first + rest, reason, pre


# ----- pure mapping -----------------------------------------------------------
@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (InvalidRequest("prompt", "empty"), grpc.StatusCode.INVALID_ARGUMENT),
        (BadKVMessage("KVChunk.dtype: x"), grpc.StatusCode.INVALID_ARGUMENT),
        (NoCapacity("full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (WrongRole("prefill only"), grpc.StatusCode.FAILED_PRECONDITION),
        (NoCommonTransport("none"), grpc.StatusCode.FAILED_PRECONDITION),
        (Draining("draining"), grpc.StatusCode.UNAVAILABLE),
        (UnknownRequest("r"), grpc.StatusCode.NOT_FOUND),
        (TransferError("peer gone"), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_status_mapping(exc: Exception, code: grpc.StatusCode) -> None:
    mapped = status_for(exc)
    assert mapped is not None and mapped[0] == code and mapped[1] == str(exc)


def test_unexpected_errors_are_not_mapped() -> None:
    assert status_for(RuntimeError("bug")) is None


def test_sampling_round_trip_keeps_explicit_zeros_and_defaults() -> None:
    p = SamplingParams(max_tokens=3, temperature=0.0, top_k=0, seed=0, stop=("x",))
    assert wire.sampling_from_pb(wire.sampling_to_pb(p)) == p
    assert wire.sampling_from_pb(worker_pb2.SamplingParams()) == SamplingParams()


def test_bad_sampling_names_the_field() -> None:
    with pytest.raises(InvalidRequest, match="top_p"):
        wire.sampling_from_pb(worker_pb2.SamplingParams(top_p=0.0))


def test_host_id_is_shared_by_processes_of_this_host() -> None:
    import subprocess
    import sys

    from tandem.worker.service import host_id

    code = "from tandem.worker.service import host_id; print(host_id())"
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert other.stdout.strip() == host_id() != ""


# ----- one worker -------------------------------------------------------------
async def test_info_health_and_load(tiny_model: Path) -> None:
    async with running_worker(tiny_model, role="decode") as w:
        info = await w.stub.Info(worker_pb2.InfoRequest(), timeout=5)
        assert info.role == "decode" and info.host_id == "host-a"
        assert list(info.kv_transports) == ["shm", "grpc"]
        assert info.model.num_layers == 4 and info.model.block_size == 16
        assert info.model.kv_dtype == "float32"
        health = await w.stub.Health(worker_pb2.HealthRequest(), timeout=5)
        assert health.status == worker_pb2.HealthResponse.SERVING
        load = await w.stub.Load(worker_pb2.LoadRequest(prompt_token_ids=PROMPT), timeout=5)
        assert load.kv_blocks_total == 64 and load.kv_blocks_used == 0
        assert load.prefix_hit_tokens == 0


async def test_generate_streams_tokens_and_reports_usage(tiny_model: Path) -> None:
    async with running_worker(tiny_model) as w:
        chunks = [
            c
            async for c in w.stub.Generate(
                worker_pb2.GenerateRequest(
                    request_id="g", prompt_token_ids=PROMPT, sampling=GREEDY
                ),
                timeout=30,
            )
        ]
        tokens = [t for c in chunks for t in c.token_ids]
        assert len(tokens) == 12 and chunks[-1].finished and chunks[-1].finish_reason == "length"
        assert chunks[-1].num_prompt_tokens == len(PROMPT)
        assert await _used_blocks(w) == 0
        # Same prompt again: the prefix cache serves the full blocks.
        load = await w.stub.Load(worker_pb2.LoadRequest(prompt_token_ids=PROMPT), timeout=5)
        assert load.prefix_hit_tokens == 16


@pytest.mark.parametrize(
    ("request_kwargs", "field"),
    [
        ({"prompt_token_ids": []}, "prompt"),
        ({"prompt_token_ids": [10**6]}, "prompt"),
        (
            {"prompt_token_ids": [1], "sampling": worker_pb2.SamplingParams(temperature=-1)},
            "temperature",
        ),
        ({"request_id": "", "prompt_token_ids": [1]}, "request_id"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    tiny_model: Path, request_kwargs: dict, field: str
) -> None:
    async with running_worker(tiny_model) as w:
        req = worker_pb2.GenerateRequest(**{"request_id": "bad", **request_kwargs})
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _collect(w.stub.Generate(req, timeout=10))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (err.value.details() or "")


async def test_role_errors_and_capacity(tiny_model: Path) -> None:
    async with running_worker(tiny_model, role="prefill", num_kv_blocks=4) as p:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _collect(
                p.stub.Generate(
                    worker_pb2.GenerateRequest(
                        request_id="x", prompt_token_ids=PROMPT, sampling=GREEDY
                    ),
                    timeout=10,
                )
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await p.stub.Reserve(
                worker_pb2.ReserveRequest(request_id="x", prompt_token_ids=PROMPT), timeout=5
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # Switch role without reloading; two reservations of 2 blocks fill the pool of 4.
        role = await p.stub.SetRole(worker_pb2.SetRoleRequest(role="decode"), timeout=10)
        assert role.role == "decode"
        for i in range(2):
            await p.stub.Reserve(
                worker_pb2.ReserveRequest(request_id=f"r{i}", prompt_token_ids=PROMPT), timeout=5
            )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await p.stub.Reserve(
                worker_pb2.ReserveRequest(request_id="r2", prompt_token_ids=PROMPT), timeout=5
            )
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # A prompt that could never fit is the caller's error, not a capacity blip.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await p.stub.Reserve(
                worker_pb2.ReserveRequest(request_id="big", prompt_token_ids=PROMPT * 4), timeout=5
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await p.stub.SetRole(worker_pb2.SetRoleRequest(role="chef"), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_drain_refuses_new_work_as_unavailable(tiny_model: Path) -> None:
    async with running_worker(tiny_model) as w:
        await w.stub.Drain(worker_pb2.DrainRequest(), timeout=10)
        health = await w.stub.Health(worker_pb2.HealthRequest(), timeout=5)
        assert health.status == worker_pb2.HealthResponse.DRAINING
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _collect(
                w.stub.Generate(
                    worker_pb2.GenerateRequest(request_id="late", prompt_token_ids=PROMPT),
                    timeout=10,
                )
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_cancelling_a_generate_stream_frees_blocks(tiny_model: Path) -> None:
    async with running_worker(tiny_model) as w:
        long = worker_pb2.SamplingParams(max_tokens=500, temperature=0.0, ignore_eos=True)
        call = w.stub.Generate(
            worker_pb2.GenerateRequest(request_id="c", prompt_token_ids=PROMPT, sampling=long),
            timeout=60,
        )
        async for _ in call:
            break  # one chunk in: the request holds blocks now
        assert await _used_blocks(w) > 0
        call.cancel()
        await _wait_blocks_free(w, within_s=1.0)


# ----- prefill + decode pairs -------------------------------------------------
@pytest.mark.parametrize("transport", ["grpc", "shm"])
async def test_disaggregated_pair_matches_colocated_greedy(
    tiny_model: Path, transport: str
) -> None:
    async with (
        running_worker(tiny_model, role="both") as both,
        running_worker(tiny_model, role="prefill") as p,
        running_worker(tiny_model, role="decode") as d,
    ):
        expected, _ = await _collect(
            both.stub.Generate(
                worker_pb2.GenerateRequest(
                    request_id="ref", prompt_token_ids=PROMPT, sampling=GREEDY
                ),
                timeout=30,
            )
        )
        segments = set(Path("/dev/shm").glob(f"{PREFIX}*"))
        tokens, reason, pre = await _disaggregated(p, d, "pd", transport)
        assert tokens == expected and reason == "length"
        assert pre.transport == transport
        blocks = -(-len(PROMPT) // 16)
        layout = p.service.layout
        assert pre.kv_bytes == layout.num_layers * blocks * 2 * layout.block_bytes
        assert pre.compute_seconds > 0 and pre.transfer_wait_seconds >= 0
        # Only the sender's pooled segment (kept for the next transfer) remains.
        pooled = {Path("/dev/shm") / n for n in load_transport("shm").pool.idle_names()}
        assert set(Path("/dev/shm").glob(f"{PREFIX}*")) - segments <= pooled
        assert await _used_blocks(p) == 0 and await _used_blocks(d) == 0


async def test_pair_picks_shm_on_one_host_and_grpc_across_hosts(tiny_model: Path) -> None:
    async with (
        running_worker(tiny_model, role="prefill", host="h1") as p,
        running_worker(tiny_model, role="decode", host="h1") as same,
        running_worker(tiny_model, role="decode", host="h2") as other,
    ):
        _, _, pre = await _disaggregated(p, same, "a")
        assert pre.transport == "shm"
        _, _, pre = await _disaggregated(p, other, "b")
        assert pre.transport == "grpc"


async def test_cancelling_decode_frees_blocks_on_both_workers(tiny_model: Path) -> None:
    async with (
        running_worker(tiny_model, role="prefill") as p,
        running_worker(tiny_model, role="decode") as d,
    ):
        long = worker_pb2.SamplingParams(max_tokens=500, temperature=0.0, ignore_eos=True)
        res = await d.stub.Reserve(
            worker_pb2.ReserveRequest(request_id="r", prompt_token_ids=PROMPT, sampling=long),
            timeout=5,
        )
        assert await _used_blocks(d) == len(res.block_ids)
        target = worker_pb2.KVTarget(address=d.address, request_id="r", block_ids=res.block_ids)
        pre = await p.stub.Prefill(
            worker_pb2.PrefillRequest(
                request_id="r", prompt_token_ids=PROMPT, sampling=long, target=target
            ),
            timeout=30,
        )
        call = d.stub.Decode(
            worker_pb2.DecodeRequest(request_id="r", first_token_id=pre.output.token_ids[0]),
            timeout=60,
        )
        async for _ in call:
            break
        call.cancel()
        await _wait_blocks_free(d, within_s=1.0)
        await _wait_blocks_free(p, within_s=1.0)


async def test_cancel_rpc_frees_an_unclaimed_reservation(tiny_model: Path) -> None:
    async with running_worker(tiny_model, role="decode") as d:
        await d.stub.Reserve(
            worker_pb2.ReserveRequest(request_id="r", prompt_token_ids=PROMPT), timeout=5
        )
        assert await _used_blocks(d) > 0
        await d.stub.Cancel(worker_pb2.CancelRequest(request_id="r"), timeout=5)
        await _wait_blocks_free(d, within_s=1.0)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await d.stub.Decode(
                worker_pb2.DecodeRequest(request_id="r", first_token_id=3), timeout=5
            ).read()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("transport", ["grpc", "shm"])
async def test_prefill_into_a_cancelled_reservation_fails_and_cleans_up(
    tiny_model: Path, transport: str
) -> None:
    async with (
        running_worker(tiny_model, role="prefill") as p,
        running_worker(tiny_model, role="decode") as d,
    ):
        res = await d.stub.Reserve(
            worker_pb2.ReserveRequest(request_id="r", prompt_token_ids=PROMPT), timeout=5
        )
        await d.stub.Cancel(worker_pb2.CancelRequest(request_id="r"), timeout=5)
        segments = set(Path("/dev/shm").glob(f"{PREFIX}*"))
        target = worker_pb2.KVTarget(
            address=d.address, request_id="r", block_ids=res.block_ids, transport=transport
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await p.stub.Prefill(
                worker_pb2.PrefillRequest(
                    request_id="r", prompt_token_ids=PROMPT, sampling=GREEDY, target=target
                ),
                timeout=30,
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no reservation" in (err.value.details() or "")
        assert not set(Path("/dev/shm").glob(f"{PREFIX}*")) - segments  # failed: removed
        await _wait_blocks_free(p, within_s=1.0)
        await _wait_blocks_free(d, within_s=1.0)


async def test_cancelling_a_prefill_midway_frees_blocks_and_its_segment(tiny_model: Path) -> None:
    # A small step budget spreads the prompt over many steps: time to cancel midway.
    async with (
        running_worker(tiny_model, role="prefill", max_num_batched_tokens=16) as p,
        running_worker(tiny_model, role="decode") as d,
    ):
        prompt = (PROMPT * 40)[:700]
        res = await d.stub.Reserve(
            worker_pb2.ReserveRequest(request_id="r", prompt_token_ids=prompt), timeout=5
        )
        segments = set(Path("/dev/shm").glob(f"{PREFIX}*"))
        target = worker_pb2.KVTarget(
            address=d.address, request_id="r", block_ids=res.block_ids, transport="shm"
        )
        call = p.stub.Prefill(
            worker_pb2.PrefillRequest(request_id="r", prompt_token_ids=prompt, target=target),
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while await _used_blocks(p) == 0:  # wait until the prefill is under way
            assert time.monotonic() < deadline, "prefill never started"
            await asyncio.sleep(0.01)
        assert call.cancel(), "the prefill finished before it could be cancelled"
        # The router cancels the decode side's reservation as well.
        await d.stub.Cancel(worker_pb2.CancelRequest(request_id="r"), timeout=5)
        await _wait_blocks_free(p, within_s=1.0)
        await _wait_blocks_free(d, within_s=1.0)
        await asyncio.sleep(0.2)  # the aborted sender removes its segment
        assert not set(Path("/dev/shm").glob(f"{PREFIX}*")) - segments


async def test_prefill_to_an_unreachable_decode_worker_is_unavailable(tiny_model: Path) -> None:
    from tandem.launch.spec import free_port

    async with running_worker(tiny_model, role="prefill") as p:
        # Nobody listens there; without accepted_transports the worker asks it for Info.
        target = worker_pb2.KVTarget(
            address=f"127.0.0.1:{free_port()}", request_id="r", block_ids=[0, 1]
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await p.stub.Prefill(
                worker_pb2.PrefillRequest(request_id="r", prompt_token_ids=PROMPT, target=target),
                timeout=30,
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "did not answer Info" in (err.value.details() or "")
        await _wait_blocks_free(p, within_s=1.0)
