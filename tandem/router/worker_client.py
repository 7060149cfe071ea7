"""The router's gRPC client for one worker: protobuf stops here.

Every call carries a deadline; gRPC errors become router errors
(`errors.from_rpc_error`); streams are async iterators of `TokenEvent` whose
`aclose()` cancels the call so that the worker aborts the request.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

import grpc

from tandem.router.errors import from_rpc_error
from tandem.router.selection import Load
from tandem.rpc.v1 import worker_pb2 as pb
from tandem.rpc.v1 import worker_pb2_grpc as pb_grpc
from tandem.sampling import SamplingParams

#: Deadline for small control calls (Health, Load, Cancel).
CONTROL_TIMEOUT_S = 2.0
#: Reserve waits for the engine's lock, which a long prefill step may hold for a while.
RESERVE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class TokenEvent:
    token_ids: tuple[int, ...]
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_cached_tokens: int
    error: str | None = None


@dataclass(frozen=True)
class ModelFacts:
    name: str
    max_model_len: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    block_size: int


@dataclass(frozen=True)
class WorkerInfo:
    model: ModelFacts
    role: str
    kv_transports: tuple[str, ...]
    host_id: str


@dataclass(frozen=True)
class Reservation:
    request_id: str
    block_ids: tuple[int, ...]
    skip_blocks: int
    kv_transports: tuple[str, ...]
    host_id: str


@dataclass(frozen=True)
class PrefillResult:
    first: TokenEvent
    compute_s: float
    transfer_wait_s: float
    kv_bytes: int
    transport: str


@dataclass(frozen=True)
class Urgency:
    """What the worker's scheduler orders by: priority, then the TTFT deadline."""

    priority: int = 0
    deadline: float | None = None  # time.monotonic() of this process


NO_URGENCY = Urgency()


def urgency_message(u: Urgency, now: float) -> pb.Urgency:
    """The deadline travels as seconds left (the worker's clock is its own); one
    already past is sent as the smallest positive value: due now, most urgent."""
    left = 0.0 if u.deadline is None else max(u.deadline - now, 1e-6)
    return pb.Urgency(priority=u.priority, ttft_seconds_left=left)


def sampling_message(p: SamplingParams) -> pb.SamplingParams:
    msg = pb.SamplingParams(
        max_tokens=p.max_tokens,
        temperature=p.temperature,
        top_k=p.top_k,
        top_p=p.top_p,
        stop_token_ids=list(p.stop_token_ids),
        ignore_eos=p.ignore_eos,
        min_tokens=p.min_tokens,
    )
    # Stop strings are applied by the router on detokenized text, not sent on.
    if p.seed is not None:
        msg.seed = p.seed
    return msg


def token_event(chunk: pb.TokenChunk) -> TokenEvent:
    return TokenEvent(
        token_ids=tuple(chunk.token_ids),
        finished=chunk.finished,
        finish_reason=chunk.finish_reason or None,
        num_prompt_tokens=chunk.num_prompt_tokens,
        num_cached_tokens=chunk.num_cached_tokens,
        error=chunk.error or None,
    )


class WorkerClient:
    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.address = address
        self._channel = grpc.aio.insecure_channel(
            address, options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        self._stub = pb_grpc.WorkerServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close(grace=None)

    async def health(self, timeout: float = CONTROL_TIMEOUT_S) -> tuple[bool, str]:
        try:
            r = await self._stub.Health(pb.HealthRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, self.name) from None
        return r.status == pb.HealthResponse.SERVING, r.role

    async def info(self, timeout: float = CONTROL_TIMEOUT_S) -> WorkerInfo:
        try:
            r = await self._stub.Info(pb.InfoRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, self.name) from None
        m = r.model
        facts = ModelFacts(m.name, m.max_model_len, m.vocab_size, tuple(m.eos_token_ids), m.block_size)
        return WorkerInfo(facts, r.role, tuple(r.kv_transports), r.host_id)

    async def load(
        self, prompt: Sequence[int] | None = None, timeout: float = CONTROL_TIMEOUT_S
    ) -> tuple[Load, int]:
        try:
            r = await self._stub.Load(pb.LoadRequest(prompt_token_ids=list(prompt or ())), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, self.name) from None
        load = Load(
            r.role, r.waiting, r.running, r.kv_blocks_total, r.kv_blocks_used, r.kv_blocks_free, r.draining
        )
        return load, r.prefix_hit_tokens

    async def generate(
        self,
        request_id: str,
        prompt: Sequence[int],
        params: SamplingParams,
        timeout: float,
        urgency: Urgency = NO_URGENCY,
    ) -> AsyncGenerator[TokenEvent, None]:
        req = pb.GenerateRequest(
            request_id=request_id,
            prompt_token_ids=list(prompt),
            sampling=sampling_message(params),
            urgency=urgency_message(urgency, time.monotonic()),
        )
        async for event in self._stream(self._stub.Generate(req, timeout=timeout)):
            yield event

    async def reserve(
        self,
        request_id: str,
        prompt: Sequence[int],
        params: SamplingParams,
        timeout: float = RESERVE_TIMEOUT_S,
        urgency: Urgency = NO_URGENCY,
    ) -> Reservation:
        req = pb.ReserveRequest(
            request_id=request_id,
            prompt_token_ids=list(prompt),
            sampling=sampling_message(params),
            urgency=pb.Urgency(priority=urgency.priority),
        )
        try:
            r = await self._stub.Reserve(req, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, self.name) from None
        return Reservation(r.request_id, tuple(r.block_ids), r.skip_blocks, tuple(r.kv_transports), r.host_id)

    async def prefill(
        self,
        request_id: str,
        prompt: Sequence[int],
        params: SamplingParams,
        target_address: str,
        reservation: Reservation,
        timeout: float,
        urgency: Urgency = NO_URGENCY,
    ) -> PrefillResult:
        target = pb.KVTarget(
            address=target_address,
            request_id=reservation.request_id,
            block_ids=list(reservation.block_ids),
            skip_blocks=reservation.skip_blocks,
            accepted_transports=list(reservation.kv_transports),
            host_id=reservation.host_id,
        )
        req = pb.PrefillRequest(
            request_id=request_id,
            prompt_token_ids=list(prompt),
            sampling=sampling_message(params),
            target=target,
            urgency=urgency_message(urgency, time.monotonic()),
        )
        try:
            r = await self._stub.Prefill(req, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, self.name) from None
        return PrefillResult(
            token_event(r.output), r.compute_seconds, r.transfer_wait_seconds, r.kv_bytes, r.transport
        )

    async def decode(self, request_id: str, first_token_id: int, timeout: float) -> AsyncGenerator[TokenEvent, None]:
        req = pb.DecodeRequest(request_id=request_id, first_token_id=first_token_id)
        async for event in self._stream(self._stub.Decode(req, timeout=timeout)):
            yield event

    async def cancel(self, request_id: str, timeout: float = CONTROL_TIMEOUT_S) -> None:
        """Best effort: a worker that is gone has nothing left to free."""
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self._stub.Cancel(pb.CancelRequest(request_id=request_id), timeout=timeout)

    async def _stream(self, call: grpc.aio.UnaryStreamCall) -> AsyncGenerator[TokenEvent, None]:
        try:
            async for chunk in call:
                yield token_event(chunk)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, self.name) from None
        finally:
            # Reached on normal end too (a no-op then); on aclose()/cancellation it
            # tells the worker to abort the request and free its blocks.
            call.cancel()
