"""RouterService over gRPC: the same `Generation` path as HTTP, protobuf at the edge."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc

from tandem.router import api_request
from tandem.router.api_request import ApiRequest
from tandem.router.errors import BadRequest, grpc_code
from tandem.router.http_server import Frontend
from tandem.router.orchestrator import Job
from tandem.rpc.v1 import router_pb2 as rpb
from tandem.rpc.v1 import router_pb2_grpc as rpb_grpc
from tandem.rpc.v1 import worker_pb2 as pb


def api_request_of(msg: rpb.RouterGenerateRequest) -> ApiRequest:
    """The gRPC request in the HTTP API's vocabulary (same validation downstream)."""
    s = msg.sampling
    which = msg.WhichOneof("prompt")
    if which is None:
        raise BadRequest("prompt is required: set text or token_ids", param="prompt")
    return ApiRequest(
        kind="completion",
        model=msg.model or None,
        prompt_text=msg.text if which == "text" else None,
        prompt_token_ids=tuple(msg.token_ids.ids) if which == "token_ids" else None,
        max_tokens=s.max_tokens if s.HasField("max_tokens") else None,
        temperature=s.temperature if s.HasField("temperature") else 1.0,
        top_p=s.top_p if s.HasField("top_p") else 1.0,
        top_k=s.top_k if s.HasField("top_k") else 0,
        seed=s.seed if s.HasField("seed") else None,
        stop=tuple(s.stop),
        stop_token_ids=tuple(s.stop_token_ids),
        ignore_eos=s.ignore_eos,
        min_tokens=s.min_tokens if s.HasField("min_tokens") else 0,
        priority=msg.priority_class or None,
    )


class RouterServicer(rpb_grpc.RouterServiceServicer):
    def __init__(self, frontend: Frontend) -> None:
        self._fe = frontend

    async def Generate(
        self, request: rpb.RouterGenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpb.RouterGenerateResponse]:
        received = time.monotonic()
        fe = self._fe
        try:
            req = api_request_of(request)
            name, facts = await fe.model()
            api_request.check_model(req.model, name)
            prompt = fe.tokenize(req)
            job = fe.job(req, prompt, facts, {})
            if request.HasField("ttft_deadline_seconds"):
                if not request.ttft_deadline_seconds > 0:
                    raise BadRequest("ttft_deadline_seconds must be > 0", param="ttft_deadline_seconds")
                job = _with_deadline(job, received + request.ttft_deadline_seconds)
            remaining = context.time_remaining()
            if remaining is not None:
                job = _with_timeout(job, remaining)
            request_id = request.request_id or job.request_id
            # Closed explicitly (as the HTTP path does) so a failed write or a
            # cancelled call releases the admission slot at once, not at GC time.
            async with contextlib.aclosing(fe.generation.stream(job, received)) as deltas:
                async for d in deltas:
                    chunk = pb.TokenChunk(
                        request_id=request_id,
                        token_ids=list(d.token_ids),
                        finished=d.finish_reason is not None,
                        finish_reason=d.finish_reason or "",
                        num_prompt_tokens=d.prompt_tokens,
                        num_cached_tokens=d.cached_tokens,
                    )
                    yield rpb.RouterGenerateResponse(tokens=chunk, text=d.text, request_id=request_id)
        except Exception as exc:
            code, message = grpc_code(exc)
            await context.abort(code, message)


def _with_deadline(job: Job, deadline: float) -> Job:
    return replace(job, ttft_deadline=deadline if job.ttft_deadline is None else min(deadline, job.ttft_deadline))


def _with_timeout(job: Job, remaining: float) -> Job:
    return replace(job, timeout_s=min(job.timeout_s, max(remaining, 0.001)))


async def start_grpc(frontend: Frontend, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """Serve RouterService; returns the server and the bound port (port 0 picks one)."""
    server = grpc.aio.server()
    rpb_grpc.add_RouterServiceServicer_to_server(RouterServicer(frontend), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind the router's gRPC port {host}:{port}")
    await server.start()
    return server, bound
