"""The router's HTTP layer and orchestration against in-process fake workers
that speak the real gRPC protocol (fast; the real engine is in tests/e2e)."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import grpc
import pytest
from fake_worker import EOS, FakeCodec, FakeWorker, fake_text, fake_token, start_fake

from tandem.router.priority import PriorityClass
from tandem.router.service import Router, RouterConfig
from tandem.rpc.v1 import worker_pb2 as pb
from tandem.rpc.v1 import worker_pb2_grpc as pb_grpc


async def _router(addrs: list[str], **kw: object) -> Router:
    cfg = RouterConfig(workers=tuple(addrs), host="127.0.0.1", port=0, poll_s=0.1, **kw)  # type: ignore[arg-type]
    return await Router.start(cfg, codec=FakeCodec())


async def _post(url: str, body: object, headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession() as s, s.post(url, data=json.dumps(body), headers=headers) as r:
        return r.status, await r.json(content_type=None), dict(r.headers)


async def _sse(url: str, body: object) -> list[object]:
    events: list[object] = []
    async with aiohttp.ClientSession() as s, s.post(url, json=body) as r:
        assert r.status == 200, await r.text()
        async for line in r.content:
            if line.startswith(b"data: "):
                data = line[6:].strip()
                events.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return events


@pytest.fixture
async def colocated():
    server, worker = await start_fake("both")
    router = await _router([worker.address])
    yield router, worker
    await router.stop()
    await server.stop(None)


async def test_completion_counts_and_text(colocated) -> None:
    router, _ = colocated
    prompt = [5, 6, 7]
    status, body, _ = await _post(
        f"http://127.0.0.1:{router.http_port}/v1/completions",
        {"model": "fake-model", "prompt": prompt, "max_tokens": 5, "temperature": 0},
    )
    assert status == 200, body
    assert body["choices"][0]["text"] == fake_text(prompt, 5)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {
        "prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8, "prompt_tokens_details": {"cached_tokens": 0}
    }


async def test_stop_string_cuts_text_and_cancels_worker(colocated) -> None:
    router, worker = colocated
    prompt = [5, 6, 7]
    full = fake_text(prompt, 40)
    stop = full[10:12]
    cut = full.index(stop)
    status, body, _ = await _post(
        f"http://127.0.0.1:{router.http_port}/v1/completions",
        {"prompt": prompt, "max_tokens": 40, "stop": [stop]},
    )
    assert status == 200, body
    assert body["choices"][0] == {"index": 0, "text": full[:cut], "logprobs": None, "finish_reason": "stop"}
    await asyncio.sleep(0.2)
    assert worker.live == set()


async def test_stream_chat_with_usage(colocated) -> None:
    router, _ = colocated
    events = await _sse(
        f"http://127.0.0.1:{router.http_port}/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True,
         "stream_options": {"include_usage": True}},
    )
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if isinstance(e, dict)]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    prompt = FakeCodec().encode_chat([("user", "hi")])
    assert text == fake_text(prompt, 4)
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in finals] == ["length"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert chunks[-1]["usage"]["prompt_tokens"] == len(prompt)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"prompt": "x", "n": 2}, 400, "n"),
        ({"prompt": "x", "logprobs": 1}, 400, "logprobs"),
        ({"prompt": "x", "model": "other"}, 404, "model"),
        ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ({"prompt": "x", "max_tokens": 1000}, 400, "max_tokens"),
        ({"prompt": "x" * 300}, 400, "prompt"),
        ({"prompt": [1, 2, 5000]}, 400, "prompt"),
        ({"prompt": [1, 2], "stop_token_ids": [5000]}, 400, "stop_token_ids"),
        ({"prompt": "x", "temperature": -1}, 400, "temperature"),
        ({"prompt": "x", "top_p": 0}, 400, "top_p"),
        ({"prompt": ["a", "b"]}, 400, "prompt"),
        ({"prompt": "x", "priority": "vip"}, 400, "priority"),
        ({}, 400, "prompt"),
    ],
)
async def test_bad_requests(colocated, body: dict, status: int, param: str) -> None:
    router, _ = colocated
    got, resp, _ = await _post(f"http://127.0.0.1:{router.http_port}/v1/completions", body)
    assert got == status, resp
    assert resp["error"]["param"] == param
    assert resp["error"]["message"]


async def test_bad_json_and_unknown_route(colocated) -> None:
    router, _ = colocated
    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://127.0.0.1:{router.http_port}/v1/completions", data=b"{nope") as r:
            assert r.status == 400
            assert "not valid JSON" in (await r.json())["error"]["message"]
        async with s.get(f"http://127.0.0.1:{router.http_port}/v1/nothing") as r:
            assert r.status == 404
            assert "error" in await r.json()


async def test_no_workers_gives_503_with_retry_after() -> None:
    router = await _router(["127.0.0.1:1"])
    try:
        t0 = time.monotonic()
        status, body, headers = await _post(
            f"http://127.0.0.1:{router.http_port}/v1/completions", {"prompt": [1, 2], "max_tokens": 2}
        )
        assert status == 503, body
        assert int(headers["Retry-After"]) >= 1
        assert time.monotonic() - t0 < 5
    finally:
        await router.stop()


async def test_long_prompts_disaggregate_short_ones_colocate() -> None:
    ps, prefill = await start_fake("prefill")
    ds, decode = await start_fake("decode")
    router = await _router([prefill.address, decode.address], min_prompt_tokens=8)
    try:
        url = f"http://127.0.0.1:{router.http_port}/v1/completions"
        long_prompt, short_prompt = list(range(20, 40)), [3, 4]
        s1, b1, _ = await _post(url, {"prompt": long_prompt, "max_tokens": 6})
        s2, b2, _ = await _post(url, {"prompt": short_prompt, "max_tokens": 6})
        assert (s1, s2) == (200, 200), (b1, b2)
        assert b1["choices"][0]["text"] == fake_text(long_prompt, 6)
        assert b2["choices"][0]["text"] == fake_text(short_prompt, 6)
        assert [c for c, _ in prefill.calls] == ["Prefill"]
        assert [c for c, _ in decode.calls] == ["Reserve", "Decode", "Generate"]
        assert prefill.live == set() and decode.live == set()
    finally:
        await router.stop()
        await ps.stop(None)
        await ds.stop(None)


async def test_decode_worker_killed_mid_stream_then_others_serve() -> None:
    s1, w1 = await start_fake("decode", token_delay_s=0.05)
    s2, w2 = await start_fake("decode", token_delay_s=0.05)
    router = await _router([w1.address, w2.address])
    url = f"http://127.0.0.1:{router.http_port}/v1/completions"
    try:
        async with aiohttp.ClientSession() as s, s.post(url, json={"prompt": [9], "max_tokens": 200, "stream": True}) as r:
            assert r.status == 200
            await r.content.readline()
            victim_server = s1 if w1.live else s2
            t0 = time.monotonic()
            await victim_server.stop(None)
            rest = (await r.content.read()).decode()
            assert time.monotonic() - t0 < 5
        assert '"error"' in rest and rest.rstrip().endswith("data: [DONE]")
        survivor = w2 if victim_server is s1 else w1
        for _ in range(3):
            status, body, _ = await _post(url, {"prompt": [9, 10], "max_tokens": 3})
            assert status == 200, body
        assert sum(1 for c, _ in survivor.calls if c == "Generate") == 3
    finally:
        await router.stop()
        await s1.stop(None)
        await s2.stop(None)


async def test_client_disconnect_cancels_on_both_workers() -> None:
    ps, prefill = await start_fake("prefill")
    ds, decode = await start_fake("decode", token_delay_s=0.05)
    router = await _router([prefill.address, decode.address], min_prompt_tokens=4)
    url = f"http://127.0.0.1:{router.http_port}/v1/completions"
    try:
        async with aiohttp.ClientSession() as s:
            r = await s.post(url, json={"prompt": list(range(10, 30)), "max_tokens": 200, "stream": True})
            assert r.status == 200
            await r.content.readline()
            assert decode.live
            r.close()
        deadline = time.monotonic() + 1.0
        while (decode.live or decode.reserved) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert decode.live == set() and decode.reserved == {}
        assert prefill.live == set()
    finally:
        await router.stop()
        await ps.stop(None)
        await ds.stop(None)


async def test_impossible_deadline_is_rejected_with_429() -> None:
    server, worker = await start_fake("both")
    classes = (PriorityClass("interactive", 100, 1e-6), PriorityClass("batch", 10))
    router = await _router([worker.address], priority_classes=classes)
    try:
        url = f"http://127.0.0.1:{router.http_port}/v1/completions"
        status, body, _ = await _post(url, {"prompt": [1, 2], "max_tokens": 2}, {"x-tandem-priority": "interactive"})
        assert status == 429, body
        assert "deadline" in body["error"]["message"]
        status, body, _ = await _post(url, {"prompt": [1, 2], "max_tokens": 2, "priority": "batch"})
        assert status == 200, body
        metrics = await (await aiohttp.ClientSession().__aenter__()).get(f"http://127.0.0.1:{router.http_port}/metrics")
        text = await metrics.text()
        assert 'tandem_router_requests_total{outcome="rejected",priority="interactive"} 1.0' in text
        assert 'tandem_router_requests_total{outcome="ok",priority="batch"} 1.0' in text
    finally:
        await router.stop()
        await server.stop(None)


def test_fake_token_is_deterministic() -> None:
    assert fake_token([1, 2], 3) == fake_token([1, 2], 3) != EOS


async def test_static_discovery_keeps_slow_workers_and_drops_unreachable_ones() -> None:
    from tandem.router.discovery import StaticDiscovery

    answers: dict[str, object] = {"a:1": (True, "decode"), "b:1": (True, "prefill")}

    async def probe(address: str):  # type: ignore[no-untyped-def]
        answer = answers[address]
        if isinstance(answer, Exception):
            raise answer
        return answer

    d = StaticDiscovery(["a:1", "b:1"], probe)
    await d.refresh()
    assert [(e.role, e.ready) for e in d.snapshot()] == [("decode", True), ("prefill", True)]
    answers["a:1"] = None  # slow: keep what is known
    answers["b:1"] = ConnectionError("refused")
    await d.refresh()
    assert [(e.role, e.ready) for e in d.snapshot()] == [("decode", True), ("prefill", False)]


async def test_prefill_failure_falls_back_to_colocated_on_the_decode_worker() -> None:
    ps, prefill = await start_fake("prefill", fail_prefill=True)
    ds, decode = await start_fake("decode")
    router = await _router([prefill.address, decode.address], min_prompt_tokens=8)
    try:
        prompt = list(range(30, 50))
        status, body, _ = await _post(f"http://127.0.0.1:{router.http_port}/v1/completions",
                                      {"prompt": prompt, "max_tokens": 5})
        assert status == 200, body
        assert body["choices"][0]["text"] == fake_text(prompt, 5)
        assert [c for c, _ in decode.calls] == ["Reserve", "Generate"]
        assert decode.reserved == {} and decode.live == set()  # the reservation was released
        assert not next(v for v in router.registry.views() if v.name == prefill.address).up
        # It still answers Load: the health check brings it back after the hold time.
        deadline = time.monotonic() + 5
        while not next(v for v in router.registry.views() if v.name == prefill.address).up:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        await router.stop()
        await ps.stop(None)
        await ds.stop(None)


async def test_metrics_exposition(colocated) -> None:
    router, _ = colocated
    await _post(f"http://127.0.0.1:{router.http_port}/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 3})
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{router.http_port}/metrics") as r:
        text = await r.text()
    assert 'tandem_router_requests_total{outcome="ok",priority="default"} 1.0' in text
    assert 'tandem_router_ttft_seconds_count{priority="default"} 1.0' in text
    assert 'tandem_router_tpot_seconds_count{priority="default"} 1.0' in text
    assert 'tandem_router_e2e_seconds_count{priority="default"} 1.0' in text
    assert 'tandem_router_queue_depth{priority="default"} 0.0' in text
    assert 'tandem_router_workers_up{role="both"} 1.0' in text


async def test_bench_serve_against_the_router(colocated, tmp_path) -> None:
    from tandem.loadgen.bench import BenchConfig, run, write

    router, _ = colocated
    cfg = BenchConfig(url=f"http://127.0.0.1:{router.http_port}", out=str(tmp_path / "r.json"), rate=50.0,
                      max_requests=12, prompt_tokens=300, output_tokens=5, plot=str(tmp_path / "r.png"))
    data = await run(cfg)
    write(cfg, data)
    summary = data["summary"]
    assert (summary["completed"], summary["failed"]) == (12, 0), summary["errors"]
    assert summary["output_length_mismatches"] == 0
    # 300 + 5 tokens do not fit the fake model's 256-token context: prompts were clipped, and said so.
    assert data["workload"]["clipped_to_context"] == {"clipped_requests": 12, "max_model_len": 256}
    assert summary["throughput"]["output_tokens_per_s"] > 0
    assert summary["ttft_s"]["p50"] <= summary["e2e_s"]["p50"]
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["completed"] == 12
    assert (tmp_path / "r.png").stat().st_size > 1000


async def test_decode_side_prefix_hit_keeps_the_request_colocated() -> None:
    ps, prefill = await start_fake("prefill")
    ds, decode = await start_fake("decode", skip_blocks=2)  # D holds 32 of the prompt's tokens
    router = await _router([prefill.address, decode.address], min_prompt_tokens=8)
    try:
        url = f"http://127.0.0.1:{router.http_port}/v1/completions"
        cached_mostly, long_prompt = list(range(40, 76)), list(range(40, 100))
        s1, b1, _ = await _post(url, {"prompt": cached_mostly, "max_tokens": 3})  # 36 - 32 < 8: colocated
        s2, b2, _ = await _post(url, {"prompt": long_prompt, "max_tokens": 3})  # 60 - 32 >= 8: shipped
        assert (s1, s2) == (200, 200), (b1, b2)
        assert b1["choices"][0]["text"] == fake_text(cached_mostly, 3)
        assert b2["choices"][0]["text"] == fake_text(long_prompt, 3)
        assert [c for c, _ in decode.calls] == ["Reserve", "Generate", "Reserve", "Decode"]
        assert [c for c, _ in prefill.calls] == ["Prefill"]
        assert decode.reserved == {} and decode.live == set()
    finally:
        await router.stop()
        await ps.stop(None)
        await ds.stop(None)


async def test_request_finished_by_its_first_token_frees_the_decode_reservation() -> None:
    # max_tokens=1: the prefill worker's first token ends the request, so no Decode call
    # will ever claim the blocks reserved on the decode worker; they must be freed now,
    # not when the reservation expires.
    ps, prefill = await start_fake("prefill")
    ds, decode = await start_fake("decode")
    router = await _router([prefill.address, decode.address], min_prompt_tokens=8)
    try:
        prompt = list(range(20, 40))
        status, body, _ = await _post(f"http://127.0.0.1:{router.http_port}/v1/completions",
                                      {"prompt": prompt, "max_tokens": 1})
        assert status == 200, body
        assert body["choices"][0]["text"] == fake_text(prompt, 1)
        assert body["choices"][0]["finish_reason"] == "length"
        assert [c for c, _ in decode.calls] == ["Reserve"]
        await asyncio.sleep(0.2)
        assert decode.reserved == {} and decode.live == set()
    finally:
        await router.stop()
        await ps.stop(None)
        await ds.stop(None)


class _Refusing(FakeWorker):
    """A worker that has begun draining (or changed role) since the router's last Load poll:
    its Load still says it serves, but it refuses new work."""

    code = grpc.StatusCode.UNAVAILABLE

    async def Generate(self, request, context):
        self.calls.append(("Generate", request.request_id))
        await context.abort(self.code, "engine is draining")
        yield  # pragma: no cover  (makes this an async generator, like the real one)

    async def Reserve(self, request, context):
        self.calls.append(("Reserve", request.request_id))
        await context.abort(self.code, "engine is draining")


class _Loaded(FakeWorker):
    """Reports a busy batch, so the router tries the refusing worker first."""

    async def Load(self, request, context):
        return pb.LoadResponse(role=self.role, running=5, kv_blocks_total=100, kv_blocks_free=100)


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION])
@pytest.mark.parametrize("prompt_len", [2, 20])  # colocated (Generate) and disaggregated (Reserve)
async def test_a_request_refused_before_its_first_token_is_routed_again(
    code: grpc.StatusCode, prompt_len: int
) -> None:
    refusing = _Refusing("decode")
    refusing.code = code
    healthy = _Loaded("decode")
    servers = [await _serve(w) for w in (refusing, healthy)]
    ps, prefill = await start_fake("prefill")
    router = await _router([refusing.address, healthy.address, prefill.address], min_prompt_tokens=8)
    try:
        prompt = list(range(30, 30 + prompt_len))
        status, body, _ = await _post(
            f"http://127.0.0.1:{router.http_port}/v1/completions", {"prompt": prompt, "max_tokens": 4}
        )
        assert status == 200, body
        assert body["choices"][0]["text"] == fake_text(prompt, 4)
        first = "Generate" if prompt_len == 2 else "Reserve"
        assert [c for c, _ in refusing.calls] == [first]
        served = [c for c, _ in healthy.calls]
        assert "Generate" in served or "Decode" in served, served
        # The next routing runs under its own id: the Cancel sent for the refused attempt
        # cannot abort it.
        refused_id = refusing.calls[0][1]
        assert all(rid != refused_id for _, rid in healthy.calls + prefill.calls)
        if prompt_len > 2 and code == grpc.StatusCode.UNAVAILABLE:
            # The refusal named the decode worker: the prefill worker still does the prompt.
            assert served == ["Reserve", "Decode"] and [c for c, _ in prefill.calls] == ["Prefill"]
    finally:
        await router.stop()
        await ps.stop(None)
        for s in servers:
            await s.stop(None)


async def _serve(worker: FakeWorker) -> grpc.aio.Server:
    server = grpc.aio.server()
    pb_grpc.add_WorkerServiceServicer_to_server(worker, server)
    worker.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    return server


class _Flippable(FakeWorker):
    """Reports what a real worker's Load says during a flip: draining, then the new role."""

    draining: bool = False

    async def Load(self, request, context):
        return pb.LoadResponse(role=self.role, kv_blocks_total=100, kv_blocks_free=100, draining=self.draining)


async def test_router_follows_a_flip_from_the_polled_load() -> None:
    flipping, other = _Flippable("decode"), FakeWorker("decode")
    servers = [await _serve(w) for w in (flipping, other)]
    router = await _router([flipping.address, other.address])
    url = f"http://127.0.0.1:{router.http_port}/v1/completions"

    async def until(check) -> None:
        deadline = time.monotonic() + 5
        while not check({v.name: v for v in router.registry.views()}[flipping.address]):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

    try:
        flipping.draining = True
        await until(lambda v: not v.usable)
        for _ in range(3):
            status, body, _ = await _post(url, {"prompt": [5, 6], "max_tokens": 2})
            assert status == 200, body
        assert flipping.calls == [] and len(other.calls) == 3  # nothing new while it drains
        flipping.role, flipping.draining = "prefill", False
        await until(lambda v: v.usable and v.role == "prefill")
    finally:
        await router.stop()
        for s in servers:
            await s.stop(None)
