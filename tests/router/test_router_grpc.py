"""RouterService.Generate over gRPC, against fake workers."""

from __future__ import annotations

import grpc
import pytest
from fake_worker import FakeCodec, fake_text, fake_token, start_fake

from tandem.router.priority import PriorityClass
from tandem.router.service import Router, RouterConfig
from tandem.rpc.v1 import router_pb2 as rpb
from tandem.rpc.v1 import router_pb2_grpc as rpb_grpc
from tandem.rpc.v1 import worker_pb2 as pb


@pytest.fixture
async def stub():
    server, worker = await start_fake("both")
    classes = (PriorityClass("normal", 1), PriorityClass("urgent", 100, 1e-6))
    cfg = RouterConfig(workers=(worker.address,), host="127.0.0.1", port=0, grpc_port=0, poll_s=0.1,
                       priority_classes=classes, default_priority="normal")
    router = await Router.start(cfg, codec=FakeCodec())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}")
    yield rpb_grpc.RouterServiceStub(channel)
    await channel.close()
    await router.stop()
    await server.stop(None)


async def test_generate_streams_tokens_and_text(stub) -> None:
    prompt = [4, 5, 6]
    req = rpb.RouterGenerateRequest(token_ids=rpb.TokenIds(ids=prompt), sampling=pb.SamplingParams(max_tokens=4))
    replies = [r async for r in stub.Generate(req, timeout=10)]
    assert [t for r in replies for t in r.tokens.token_ids] == [fake_token(prompt, i) for i in range(4)]
    assert "".join(r.text for r in replies) == fake_text(prompt, 4)
    assert replies[-1].tokens.finished and replies[-1].tokens.finish_reason == "length"
    assert replies[-1].tokens.num_prompt_tokens == 3
    assert len({r.request_id for r in replies}) == 1


@pytest.mark.parametrize(
    ("req", "code", "words"),
    [
        (rpb.RouterGenerateRequest(), grpc.StatusCode.INVALID_ARGUMENT, "prompt is required"),
        (rpb.RouterGenerateRequest(text="hi", sampling=pb.SamplingParams(top_p=2.0)),
         grpc.StatusCode.INVALID_ARGUMENT, "top_p"),
        (rpb.RouterGenerateRequest(text="hi", model="nope"), grpc.StatusCode.NOT_FOUND, "does not exist"),
        (rpb.RouterGenerateRequest(text="hi", priority_class="urgent"), grpc.StatusCode.RESOURCE_EXHAUSTED,
         "deadline"),
        (rpb.RouterGenerateRequest(text="hi", ttft_deadline_seconds=1e-9), grpc.StatusCode.RESOURCE_EXHAUSTED,
         "deadline"),
    ],
)
async def test_generate_errors(stub, req, code, words) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.Generate(req, timeout=10):
            pass
    assert err.value.code() == code
    assert words in (err.value.details() or "")
