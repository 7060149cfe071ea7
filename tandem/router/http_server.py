"""The OpenAI-compatible HTTP front door (aiohttp): a thin shell that parses,
tokenizes, hands the request to `Generation` and writes JSON or SSE.
Every error, wherever raised, leaves through `errors.http_error`.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from tandem.router import api_request, api_response
from tandem.router.api_request import ApiRequest
from tandem.router.errors import (
    BadRequest,
    MethodNotAllowed,
    NotFoundPath,
    RouterError,
    Unavailable,
    http_error,
)
from tandem.router.generation import Delta, Generation
from tandem.router.orchestrator import Job
from tandem.router.priority import PriorityClass, resolve
from tandem.router.registry import WorkerRegistry
from tandem.router.selection import can_decode
from tandem.router.text_codec import TextCodec
from tandem.router.worker_client import ModelFacts

log = logging.getLogger(__name__)

#: Largest request body accepted (a long token-id prompt as JSON fits easily).
MAX_BODY_BYTES = 32 << 20


@dataclass(frozen=True)
class FrontendConfig:
    classes: tuple[PriorityClass, ...]
    default_class: PriorityClass
    request_timeout_s: float = 600.0
    served_name: str | None = None  # overrides the workers' model name


class Frontend:
    def __init__(
        self, generation: Generation, codec: TextCodec, registry: WorkerRegistry, config: FrontendConfig
    ) -> None:
        self.generation = generation
        self.codec = codec
        self.registry = registry
        self.config = config
        self.created = int(time.time())

    async def model(self) -> tuple[str, ModelFacts]:
        facts = await self.registry.model_facts()
        return self.config.served_name or facts.name, facts

    def job(self, req: ApiRequest, prompt: tuple[int, ...], facts: ModelFacts, headers: dict[str, str]) -> Job:
        cls = resolve(self.config.classes, self.config.default_class, headers, req.priority)
        for name, ids in (("prompt", prompt), ("stop_token_ids", req.stop_token_ids)):
            for t in ids:
                if t >= facts.vocab_size:
                    raise BadRequest(f"token id {t} is out of range for a vocabulary of {facts.vocab_size}", param=name)
        params = api_request.sampling_params(req, len(prompt), facts.max_model_len, facts.eos_token_ids)
        if params.seed is not None and not -(2**63) <= params.seed < 2**63:
            raise BadRequest("seed must fit in a signed 64-bit integer", param="seed")
        deadline = None if cls.ttft_slo_s is None else time.monotonic() + cls.ttft_slo_s
        prefix = "chatcmpl" if req.kind == "chat" else "cmpl"
        return Job(f"{prefix}-{uuid.uuid4().hex}", prompt, params, cls, deadline, self.config.request_timeout_s)

    def tokenize(self, req: ApiRequest) -> tuple[int, ...]:
        if req.kind == "chat":
            return tuple(self.codec.encode_chat([(m.role, m.content) for m in req.messages]))
        if req.prompt_token_ids is not None:
            return req.prompt_token_ids
        return tuple(self.codec.encode(req.prompt_text or ""))


FRONTEND = web.AppKey("frontend", Frontend)


def build_app(frontend: Frontend) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_errors_middleware])
    app[FRONTEND] = frontend
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/v1/completions", _completions)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    return app


def _error_response(exc: BaseException) -> web.Response:
    err = http_error(exc)
    return web.Response(
        status=err.status, text=err.json_text(), content_type="application/json", headers=err.headers
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return _error_response(NotFoundPath(f"no route for {request.method} {request.path}"))
    except web.HTTPMethodNotAllowed:
        return _error_response(MethodNotAllowed(f"{request.method} is not allowed on {request.path}"))
    except web.HTTPRequestEntityTooLarge:
        return _error_response(BadRequest(f"request body exceeds {MAX_BODY_BYTES} bytes"))
    except web.HTTPException:
        raise
    except Exception as exc:
        if not isinstance(exc, RouterError):
            log.exception("unexpected error serving %s", request.path)
        return _error_response(exc)


async def _models(request: web.Request) -> web.Response:
    fe: Frontend = request.app[FRONTEND]
    name, facts = await fe.model()
    return web.json_response(api_response.models_list(name, fe.created, facts.max_model_len))


async def _health(request: web.Request) -> web.Response:
    fe: Frontend = request.app[FRONTEND]
    views = fe.registry.views()
    workers = [{"name": v.name, "role": v.role, "up": v.up, "inflight": v.inflight} for v in views]
    if not any(can_decode(v) for v in views):
        err = http_error(Unavailable("no decode-capable worker is up", retry_after_s=2))
        body = {"status": "unavailable", "workers": workers, **err.body}
        return web.json_response(body, status=503, headers=err.headers)
    return web.json_response({"status": "ok", "workers": workers})


async def _metrics(request: web.Request) -> web.Response:
    fe: Frontend = request.app[FRONTEND]
    metrics = fe.generation.metrics
    views = fe.registry.views()
    for role in ("prefill", "decode", "both"):
        metrics.workers_up.labels(role=role).set(sum(1 for v in views if v.up and v.role == role))
    body = metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def _completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "completion")


async def _chat(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "chat")


async def _generate(request: web.Request, kind: api_request.Kind) -> web.StreamResponse:
    received = time.monotonic()
    fe: Frontend = request.app[FRONTEND]
    req = api_request.parse_request(kind, api_request.parse_json(await request.read()))
    name, facts = await fe.model()
    api_request.check_model(req.model, name)
    job = fe.job(req, fe.tokenize(req), facts, {k.lower(): v for k, v in request.headers.items()})
    deltas = fe.generation.stream(job, received)
    async with contextlib.aclosing(deltas):
        # The first delta comes before any byte is written, so admission and
        # routing failures still get a proper status code.
        first = await anext(deltas)
        if req.stream:
            return await _stream(request, req, name, job.request_id, first, deltas, fe.created)
        text, last = [first.text], first
        async for d in deltas:
            text.append(d.text)
            last = d
    use = api_response.usage(last.prompt_tokens, last.completion_tokens, last.cached_tokens)
    body = api_response.full_body(kind, job.request_id, int(time.time()), name, "".join(text), last.finish_reason, use)
    return web.json_response(body)


async def _stream(
    request: web.Request,
    req: ApiRequest,
    model: str,
    request_id: str,
    first: Delta,
    rest: AsyncGenerator[Delta, None],
    created: int,
) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    now = int(time.time())
    usage_field = req.include_usage
    last = first
    if req.kind == "chat":
        await resp.write(api_response.sse(
            api_response.chunk("chat", request_id, now, model, "", None, role=True, with_usage_field=usage_field)
        ))
    try:
        await resp.write(api_response.sse(
            api_response.chunk(req.kind, request_id, now, model, first.text, first.finish_reason,
                               with_usage_field=usage_field)
        ))
        async for d in rest:
            last = d
            await resp.write(api_response.sse(
                api_response.chunk(req.kind, request_id, now, model, d.text, d.finish_reason,
                                   with_usage_field=usage_field)
            ))
    except (ConnectionResetError, ConnectionError):
        raise
    except Exception as exc:
        # Headers are gone already: report the failure in-band, as OpenAI-compatible servers do.
        await resp.write(api_response.sse(http_error(exc).body))
        await resp.write(api_response.SSE_DONE)
        return resp
    if usage_field:
        use = api_response.usage(last.prompt_tokens, last.completion_tokens, last.cached_tokens)
        await resp.write(api_response.sse(api_response.usage_chunk(req.kind, request_id, now, model, use)))
    await resp.write(api_response.SSE_DONE)
    return resp
