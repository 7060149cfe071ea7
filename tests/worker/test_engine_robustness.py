"""Nothing leaks and bad input never kills the engine loop."""

from __future__ import annotations

import asyncio
import random

import pytest

from tandem.sampling import InvalidRequest, SamplingParams
from tandem.worker.async_engine import AsyncEngine
from tandem.worker.config import EngineConfig
from tandem.worker.engine import Engine
from tandem.worker.errors import Draining
from tandem.worker.outputs import StepOutput
from tests.worker.conftest import ModelFactory


def test_blocks_return_to_zero_across_1000_short_requests(tiny_model: ModelFactory) -> None:
    e = Engine(
        EngineConfig(str(tiny_model("llama")), device="cpu", num_kv_blocks=48, max_num_seqs=64)
    )
    rng = random.Random(0)
    peak_cached = []
    for wave in range(10):
        ids = []
        for i in range(100):
            rid = f"w{wave}-{i}"
            n = rng.randint(1, 40)
            e.add_request(
                rid,
                [rng.randrange(3, 1000) for _ in range(n)],
                SamplingParams(max_tokens=rng.randint(1, 4), temperature=0.0),
            )
            ids.append(rid)
        steps = 0
        while e.has_work():
            e.step()
            steps += 1
            if steps == 3:  # cancel a tenth of the wave mid-flight
                for rid in ids[::10]:
                    e.abort(rid)
        assert e.pool.num_used == 0, f"wave {wave} leaked {e.pool.num_used} blocks"
        assert not e.scheduler.requests
        peak_cached.append(e.pool.num_cached)
    # Cached (free, reusable) blocks are bounded by the pool, not by traffic.
    assert max(peak_cached) <= 48


@pytest.mark.parametrize(
    ("prompt", "field", "message"),
    [
        ([], "prompt", "at least one token"),
        (list(range(3, 3 + 2048)), "prompt", "context is 2048"),
        ([5, 10**6], "prompt", "outside the vocabulary"),
        ([5, -1], "prompt", "outside the vocabulary"),
    ],
)
def test_bad_prompts_are_rejected_with_a_named_field(
    tiny_model: ModelFactory, prompt: list[int], field: str, message: str
) -> None:
    e = Engine(EngineConfig(str(tiny_model("llama")), device="cpu", num_kv_blocks=256))
    with pytest.raises(InvalidRequest, match=message) as info:
        e.add_request("bad", prompt, SamplingParams())
    assert info.value.field == field
    assert not e.has_work()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_k": -3}, "top_k"),
        ({"temperature": float("nan")}, "temperature"),
    ],
)
def test_invalid_sampling_values_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        SamplingParams(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_prompt_larger_than_the_pool_is_rejected_up_front(tiny_model: ModelFactory) -> None:
    e = Engine(EngineConfig(str(tiny_model("llama")), device="cpu", num_kv_blocks=2, block_size=16))
    with pytest.raises(InvalidRequest, match="pool holds 2"):
        e.add_request("big", list(range(3, 60)), SamplingParams())


async def test_async_engine_serves_good_requests_after_bad_ones(tiny_model: ModelFactory) -> None:
    eng = AsyncEngine.start(EngineConfig(str(tiny_model("llama")), device="cpu", num_kv_blocks=64))
    try:
        for bad in ([], [10**7], list(range(3, 3000))):
            with pytest.raises(InvalidRequest):
                async for _ in eng.generate(f"bad{len(bad)}", bad, SamplingParams()):
                    pass
        outs = [
            o
            async for o in eng.generate(
                "good", [5, 6, 7], SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
            )
        ]
        assert sum(len(o.new_token_ids) for o in outs) == 5
        assert outs[-1].finished and outs[-1].finish_reason == "length"
        assert eng.load()[0].kv_blocks_used == 0
    finally:
        await eng.shutdown()


async def test_consumer_that_stops_early_frees_blocks(tiny_model: ModelFactory) -> None:
    eng = AsyncEngine.start(EngineConfig(str(tiny_model("llama")), device="cpu", num_kv_blocks=64))
    try:
        stream = eng.generate(
            "x",
            list(range(3, 40)),
            SamplingParams(max_tokens=500, temperature=0.0, ignore_eos=True),
        )
        async for _ in stream:
            break
        await stream.aclose()
        for _ in range(50):
            if eng.load()[0].kv_blocks_used == 0:
                break
            await asyncio.sleep(0.02)
        assert eng.load()[0].kv_blocks_used == 0
    finally:
        await eng.shutdown()


async def test_role_change_drains_without_reload(tiny_model: ModelFactory) -> None:
    eng = AsyncEngine.start(EngineConfig(str(tiny_model("llama")), device="cpu", num_kv_blocks=64))
    try:
        model_before = eng.engine.runner.model
        stream = eng.generate(
            "x", [5, 6, 7], SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
        )
        consume = asyncio.ensure_future(_collect(stream))
        await asyncio.sleep(0)
        await eng.set_role("decode")
        tokens = await consume
        assert len(tokens) == 20  # the in-flight request finished before the switch
        assert eng.role == "decode" and eng.engine.runner.model is model_before
        await eng.drain()
        with pytest.raises(Draining):
            async for _ in eng.generate("y", [5], SamplingParams()):
                pass
        eng.resume()
        assert (
            len(
                await _collect(
                    eng.generate("z", [5], SamplingParams(max_tokens=2, ignore_eos=True))
                )
            )
            == 2
        )
    finally:
        await eng.shutdown()


async def _collect(stream: object) -> list[int]:
    out: list[int] = []
    async for o in stream:  # type: ignore[attr-defined]
        out.extend(o.new_token_ids)
    return out


def test_queue_waits_while_reservations_hold_the_blocks(tiny_model: ModelFactory) -> None:
    e = Engine(EngineConfig(str(tiny_model("llama")), device="cpu", num_kv_blocks=4, block_size=16))
    e.reserve("held", list(range(3, 50)), SamplingParams())  # 3 of 4 blocks
    e.add_request("next", list(range(3, 40)), SamplingParams(max_tokens=2, ignore_eos=True))  # needs 3
    assert e.step() == [] and e.has_work()  # waits; not failed
    e.abort("held")
    outs = []
    while e.has_work():
        outs += e.step()
    assert outs[-1].request_id == "next" and outs[-1].finish_reason == "length"
    assert e.pool.num_used == 0


async def test_a_dead_step_thread_fails_open_streams_and_reports_not_alive(
    tiny_model: ModelFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    eng = AsyncEngine.start(EngineConfig(str(tiny_model("llama")), device="cpu", num_kv_blocks=64))
    try:
        assert eng.alive
        stream = eng.generate("x", [5, 6, 7], SamplingParams(max_tokens=1000, ignore_eos=True))
        first = await stream.__anext__()
        assert not first.finished

        def broken() -> list[object]:
            raise RuntimeError("simulated engine bug")

        monkeypatch.setattr(eng.engine, "step", broken)
        rest = [o async for o in stream]
        assert rest[-1].finished and rest[-1].finish_reason == "error"
        for _ in range(50):
            if not eng.alive:
                break
            await asyncio.sleep(0.01)
        assert not eng.alive
    finally:
        await eng.shutdown()


async def test_unclaimed_reservation_expires_on_an_otherwise_idle_engine(
    tiny_model: ModelFactory,
) -> None:
    # Nothing else runs, so no step() ever happens: expiry must not depend on one,
    # or the blocks leak and drain() waits for the reservation forever.
    eng = AsyncEngine.start(
        EngineConfig(
            str(tiny_model("llama")), device="cpu", role="decode", num_kv_blocks=64, reservation_ttl_s=0.1
        )
    )
    try:
        eng.reserve("orphan", list(range(3, 40)), SamplingParams())
        assert eng.load()[0].kv_blocks_used > 0
        await asyncio.wait_for(eng.drain(), timeout=5.0)
        assert eng.load()[0].kv_blocks_used == 0
    finally:
        await eng.shutdown()


async def test_requests_after_the_step_thread_died_fail_instead_of_hanging(
    tiny_model: ModelFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    eng = AsyncEngine.start(EngineConfig(str(tiny_model("llama")), device="cpu", num_kv_blocks=64))
    try:

        def broken() -> list[object]:
            raise RuntimeError("simulated engine bug")

        monkeypatch.setattr(eng.engine, "step", broken)
        first = [o async for o in eng.generate("x", [5, 6, 7], SamplingParams(max_tokens=3))]
        assert first[-1].finish_reason == "error"
        # Nothing steps any more: a new request must be refused (UNAVAILABLE,
        # retry elsewhere), not queued on an engine that never runs it.
        with pytest.raises(Draining):
            await asyncio.wait_for(
                _collect(eng.generate("y", [5, 6, 7], SamplingParams(max_tokens=3))), timeout=5.0
            )
        with pytest.raises(Draining):
            eng.reserve("z", [5, 6, 7], SamplingParams())
    finally:
        await eng.shutdown()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_stop_token_id_outside_the_vocabulary_fails_no_request(
    tiny_model: ModelFactory, temperature: float
) -> None:
    # Such an id can never be sampled; while min_tokens suppresses stop ids it
    # must not fail the step (and with it every request in the batch).
    e = Engine(EngineConfig(str(tiny_model("llama")), device="cpu", num_kv_blocks=64))
    e.add_request("bystander", [5, 6, 7], SamplingParams(max_tokens=3, ignore_eos=True))
    odd = SamplingParams(max_tokens=3, min_tokens=2, temperature=temperature, seed=1, stop_token_ids=(10**7,))
    e.add_request("odd", [8, 9, 10], odd)
    outs = []
    while e.has_work():
        outs += e.step()
    assert all(o.error is None for o in outs)
    for rid in ("bystander", "odd"):
        assert sum(len(o.new_token_ids) for o in outs if o.request_id == rid) == 3
    assert e.pool.num_used == 0


async def test_a_cancelled_role_change_admits_work_again(tiny_model: ModelFactory) -> None:
    # SetRole's client may give up while the drain waits; the worker then serves
    # on in its old role rather than refusing every request as "draining".
    eng = AsyncEngine.start(EngineConfig(str(tiny_model("llama")), device="cpu", num_kv_blocks=64))
    try:
        eng.reserve("held", [5, 6, 7], SamplingParams())  # keeps the drain waiting
        change = asyncio.ensure_future(eng.set_role("decode"))
        await asyncio.sleep(0.2)
        change.cancel()
        with pytest.raises(asyncio.CancelledError):
            await change
        assert eng.role == "both"
        eng.abort("held")
        p = SamplingParams(max_tokens=2, ignore_eos=True)
        assert len(await asyncio.wait_for(_collect(eng.generate("y", [5, 6, 7], p)), 5.0)) == 2
    finally:
        await eng.shutdown()


@pytest.mark.timeout(60)  # the unsafe way could leave the stream waiting forever
async def test_abort_from_another_thread_ends_the_stream_through_the_loop(
    tiny_model: ModelFactory,
) -> None:
    # The Cancel RPC aborts from a worker thread (a step may hold the engine
    # lock). asyncio objects must only be touched on the loop's own thread;
    # debug mode turns a violation into an error instead of a missed wake-up.
    asyncio.get_running_loop().set_debug(True)
    eng = AsyncEngine.start(
        EngineConfig(str(tiny_model("llama")), device="cpu", num_kv_blocks=4, block_size=16)
    )
    try:
        eng.reserve("held", list(range(3, 50)), SamplingParams())  # x waits: its stream is idle
        consumer = asyncio.ensure_future(
            _collect_outputs(eng.generate("x", list(range(3, 40)), SamplingParams()))
        )
        await asyncio.sleep(0.1)
        assert await asyncio.to_thread(eng.abort, "x")
        outs = await asyncio.wait_for(consumer, 5.0)
        assert outs[-1].finished and outs[-1].finish_reason == "abort"
    finally:
        await eng.shutdown()


async def _collect_outputs(stream: object) -> list[StepOutput]:
    return [o async for o in stream]  # type: ignore[attr-defined]


async def test_drain_of_an_engine_whose_step_thread_died_returns(
    tiny_model: ModelFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its work will never finish; waiting for it would hang a role change forever.
    eng = AsyncEngine.start(EngineConfig(str(tiny_model("llama")), device="cpu", num_kv_blocks=64))
    try:

        def broken() -> list[object]:
            raise RuntimeError("simulated engine bug")

        monkeypatch.setattr(eng.engine, "step", broken)
        outs = await _collect_outputs(eng.generate("x", [5, 6, 7], SamplingParams(max_tokens=3)))
        assert outs[-1].finish_reason == "error"
        await asyncio.wait_for(eng.drain(), timeout=5.0)
        with pytest.raises(Draining):
            await asyncio.wait_for(eng.set_role("decode"), timeout=5.0)
    finally:
        await eng.shutdown()
