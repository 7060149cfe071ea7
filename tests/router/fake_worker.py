"""An in-process WorkerService that speaks the real protocol with a fake model.

Token i of a request is a pure function of its prompt, so the colocated and the
disaggregated path must produce the same tokens; `live` holds the requests that
own "blocks" so tests can check that cancellation frees them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import grpc

from tandem.rpc.v1 import worker_pb2 as pb
from tandem.rpc.v1 import worker_pb2_grpc as pb_grpc

VOCAB = 1000
EOS = 1
IMPORTED: dict[str, set[str]] = {}  # decode address -> request ids whose KV "arrived"


def fake_token(prompt: Sequence[int], i: int) -> int:
    return (sum(prompt) * 31 + i * 7) % 900 + 10


@dataclass
class FakeWorker(pb_grpc.WorkerServiceServicer):
    role: str
    address: str = ""
    max_model_len: int = 256
    token_delay_s: float = 0.0
    prefill_delay_s: float = 0.0
    prefix_hits: int = 0
    eos_at: int | None = None  # emit EOS as token number eos_at (0-based)
    skip_blocks: int = 0  # Reserve reports this many leading blocks as already cached
    fail_prefill: bool = False  # Prefill answers UNAVAILABLE (a prefill worker dying mid-call)
    live: set[str] = field(default_factory=set)
    reserved: dict[str, tuple[int, ...]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    sampling: dict[str, pb.SamplingParams] = field(default_factory=dict)

    async def Health(self, request, context):
        return pb.HealthResponse(status=pb.HealthResponse.SERVING, role=self.role)

    async def Info(self, request, context):
        model = pb.ModelInfo(
            name="fake-model", max_model_len=self.max_model_len, vocab_size=VOCAB, eos_token_ids=[EOS],
            block_size=16, num_layers=2, num_kv_heads=1, head_dim=8, kv_dtype="float32",
        )
        return pb.InfoResponse(model=model, role=self.role, kv_transports=["grpc"], host_id="h")

    async def Load(self, request, context):
        hits = self.prefix_hits if request.prompt_token_ids else 0
        return pb.LoadResponse(
            role=self.role, waiting=0, running=len(self.live), kv_blocks_total=100,
            kv_blocks_used=len(self.live), kv_blocks_free=100 - len(self.live), prefix_hit_tokens=hits,
        )

    async def Generate(self, request, context) -> AsyncIterator[pb.TokenChunk]:
        rid, prompt = request.request_id, tuple(request.prompt_token_ids)
        self.calls.append(("Generate", rid))
        if not prompt:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "prompt: empty")
        self.live.add(rid)
        try:
            await asyncio.sleep(self.prefill_delay_s)
            async for chunk in self._tokens(rid, prompt, request.sampling, 0):
                yield chunk
        finally:
            self.live.discard(rid)

    async def Reserve(self, request, context):
        rid = request.request_id
        self.calls.append(("Reserve", rid))
        self.reserved[rid] = tuple(request.prompt_token_ids)
        self.sampling[rid] = request.sampling
        self.live.add(rid)
        n = -(-len(request.prompt_token_ids) // 16)
        return pb.ReserveResponse(request_id=rid, block_ids=list(range(n)), skip_blocks=min(self.skip_blocks, n),
                                  kv_transports=["grpc"], host_id="h")

    async def Prefill(self, request, context):
        rid, prompt = request.request_id, tuple(request.prompt_token_ids)
        self.calls.append(("Prefill", rid))
        if self.fail_prefill:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "prefill worker went away")
        self.live.add(rid)
        try:
            await asyncio.sleep(self.prefill_delay_s)
            IMPORTED.setdefault(request.target.address, set()).add(request.target.request_id)
            first = fake_token(prompt, 0)
            done = request.sampling.max_tokens == 1
            out = pb.TokenChunk(
                request_id=rid, token_ids=[first], finished=True,
                finish_reason="length" if done else "prefilled", num_prompt_tokens=len(prompt),
                num_cached_tokens=self.prefix_hits,
            )
            return pb.PrefillResponse(output=out, compute_seconds=0.001, transport="grpc", kv_bytes=64)
        finally:
            self.live.discard(rid)

    async def Decode(self, request, context) -> AsyncIterator[pb.TokenChunk]:
        rid = request.request_id
        self.calls.append(("Decode", rid))
        if rid not in self.reserved or rid not in IMPORTED.get(self.address, set()):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{rid}: KV not imported")
        prompt = self.reserved[rid]
        try:
            async for chunk in self._tokens(rid, prompt, self.sampling.get(rid), 1):
                yield chunk
        finally:
            self.live.discard(rid)
            self.reserved.pop(rid, None)

    async def Cancel(self, request, context):
        self.cancelled.append(request.request_id)
        self.live.discard(request.request_id)
        self.reserved.pop(request.request_id, None)
        return pb.CancelResponse()

    async def _tokens(self, rid, prompt, sampling, start) -> AsyncIterator[pb.TokenChunk]:
        max_tokens = sampling.max_tokens if sampling is not None and sampling.HasField("max_tokens") else 16
        for i in range(start, max_tokens):
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
            tok = EOS if self.eos_at == i else fake_token(prompt, i)
            last = i == max_tokens - 1 or tok == EOS
            reason = ("stop" if tok == EOS else "length") if last else ""
            yield pb.TokenChunk(
                request_id=rid, token_ids=[tok], finished=last, finish_reason=reason,
                num_prompt_tokens=len(prompt), num_cached_tokens=0,
            )
            if last:
                return


async def start_fake(role: str, **kwargs: object) -> tuple[grpc.aio.Server, FakeWorker]:
    worker = FakeWorker(role, **kwargs)  # type: ignore[arg-type]
    server = grpc.aio.server()
    pb_grpc.add_WorkerServiceServicer_to_server(worker, server)
    port = server.add_insecure_port("127.0.0.1:0")
    worker.address = f"127.0.0.1:{port}"
    await server.start()
    return server, worker


class FakeCodec:
    """Characters <-> ids: id = ord(c); text of id t is chr(97 + t % 26)."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) % VOCAB for c in text]

    def encode_chat(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        return self.encode("".join(f"<{r}>{c}" for r, c in messages) + "<assistant>")

    def detokenizer(self, prompt: Sequence[int]) -> _Detok:
        return _Detok()


class _Detok:
    def add(self, token_ids: Sequence[int]) -> str:
        return "".join("" if t == EOS else chr(97 + t % 26) for t in token_ids)

    def flush(self) -> str:
        return ""


def fake_text(prompt: Sequence[int], n: int) -> str:
    return "".join(chr(97 + fake_token(prompt, i) % 26) for i in range(n))
