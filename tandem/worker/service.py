"""The gRPC WorkerService around one AsyncEngine.

Protobuf stops here: each handler converts its request (tandem.worker.wire),
calls the engine, and converts back. Domain errors become status codes in
tandem.worker.status. A client that cancels a Generate/Decode stream (or a
Prefill) aborts the request, so the engine frees its blocks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import grpc

from tandem.rpc.v1 import worker_pb2, worker_pb2_grpc
from tandem.sampling import InvalidRequest
from tandem.worker import wire
from tandem.worker.async_engine import AsyncEngine
from tandem.worker.config import ROLES
from tandem.worker.kv_transfer import (
    DEFAULT_NUM_STREAMS,
    Endpoint,
    TransferError,
    TransferTarget,
    load_transport,
    select_transport,
)
from tandem.worker.kv_transfer_peers import CHANNEL_OPTIONS, PeerChannels
from tandem.worker.kv_transfer_receiver import receive
from tandem.worker.kv_transfer_sender import KVSender
from tandem.worker.outputs import StepOutput
from tandem.worker.status import grpc_errors

log = logging.getLogger(__name__)


def host_id() -> str:
    """Equal for two processes exactly when they can share KV through /dev/shm.

    The boot id tells kernels (hosts) apart; the device number of the /dev/shm
    mount tells apart containers of one host that each have their own tmpfs;
    the hostname keeps the id readable.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    try:
        shm_dev = os.stat("/dev/shm").st_dev
    except OSError:
        shm_dev = 0
    return f"{socket.gethostname()}/{boot[:8]}/{shm_dev:x}"


def _version() -> str:
    try:
        return metadata.version("tandem-serve")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class ServiceSettings:
    kv_transports: tuple[str, ...]  # accepted (and used for sending), fastest first
    host_id: str
    device: str = "cpu"
    kv_streams: int = DEFAULT_NUM_STREAMS  # parallel PushKV streams per transfer

    def __post_init__(self) -> None:
        if "grpc" not in self.kv_transports:
            raise ValueError("kv_transports must include 'grpc' (the fallback every peer has)")
        if self.kv_streams < 1:
            raise ValueError(f"kv_streams must be >= 1, got {self.kv_streams}")


class WorkerService(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(self, engine: AsyncEngine, settings: ServiceSettings, peers: PeerChannels) -> None:
        self.engine = engine
        self.settings = settings
        self.peers = peers
        self.layout = wire.kv_layout(engine.model_info)
        self.draining = False

    # ----- introspection -------------------------------------------------
    async def Health(self, request, context):  # type: ignore[no-untyped-def]
        if not self.engine.alive:
            status = worker_pb2.HealthResponse.NOT_SERVING
        elif self.draining:
            status = worker_pb2.HealthResponse.DRAINING
        else:
            status = worker_pb2.HealthResponse.SERVING
        return worker_pb2.HealthResponse(status=status, role=self.engine.role)

    async def Info(self, request, context):  # type: ignore[no-untyped-def]
        info = worker_pb2.InfoResponse(
            model=wire.model_info_pb(self.engine.model_info),
            role=self.engine.role,
            kv_transports=self.settings.kv_transports,
            host_id=self.settings.host_id,
            device=self.settings.device,
            version=_version(),
            pid=os.getpid(),
        )
        if "cuda_ipc" in self.settings.kv_transports:
            # The transport's handshake: senders map this worker's KV cache once.
            from tandem.worker.kv_transport_cuda_ipc import export_pool

            info.kv_cuda_ipc.CopyFrom(export_pool(self.engine.engine.runner.kv_caches))
        return info

    async def Load(self, request, context):  # type: ignore[no-untyped-def]
        prompt = list(request.prompt_token_ids) or None
        # The engine lock may be held by a step: wait for it off the event loop.
        info, hits = await asyncio.to_thread(self.engine.load, prompt)
        return wire.load_pb(info, hits)

    # ----- colocated -----------------------------------------------------
    async def Generate(self, request, context) -> AsyncIterator[worker_pb2.TokenChunk]:  # type: ignore[no-untyped-def]
        async with grpc_errors(context):
            rid = wire.request_id(request.request_id)
            params = wire.sampling_from_pb(request.sampling)
            urgency = wire.urgency_from_pb(request.urgency, time.monotonic())
            stream = self.engine.generate(rid, list(request.prompt_token_ids), params, urgency)
            async for chunk in _relay(stream):
                yield chunk

    # ----- disaggregated: decode side ------------------------------------
    async def Reserve(self, request, context):  # type: ignore[no-untyped-def]
        async with grpc_errors(context):
            rid = wire.request_id(request.request_id)
            params = wire.sampling_from_pb(request.sampling)
            prompt = list(request.prompt_token_ids)
            urgency = wire.urgency_from_pb(request.urgency, time.monotonic())
            res = await asyncio.to_thread(self.engine.reserve, rid, prompt, params, urgency)
            return worker_pb2.ReserveResponse(
                request_id=res.request_id,
                block_ids=res.block_ids,
                skip_blocks=res.skip_blocks,
                kv_transports=self.settings.kv_transports,
                host_id=self.settings.host_id,
            )

    async def PushKV(self, request_iterator, context):  # type: ignore[no-untyped-def]
        async with grpc_errors(context):
            return await receive(
                request_iterator, self.layout, self.settings.kv_transports, self.engine.import_kv
            )

    async def Decode(self, request, context) -> AsyncIterator[worker_pb2.TokenChunk]:  # type: ignore[no-untyped-def]
        async with grpc_errors(context):
            rid = wire.request_id(request.request_id)
            async for chunk in _relay(self.engine.decode(rid, request.first_token_id)):
                yield chunk

    # ----- disaggregated: prefill side -----------------------------------
    async def Prefill(self, request, context):  # type: ignore[no-untyped-def]
        async with grpc_errors(context):
            rid = wire.request_id(request.request_id)
            params = wire.sampling_from_pb(request.sampling)
            prompt = list(request.prompt_token_ids)
            target = wire.target_from_pb(request.target) if request.HasField("target") else None
            urgency = wire.urgency_from_pb(request.urgency, time.monotonic())
            sender = await self._open_sender(target, request.target) if target else None
            stats = None
            t0 = time.perf_counter()
            try:
                out = await self.engine.prefill(
                    rid,
                    prompt,
                    params,
                    kv_sink=sender.submit if sender else _discard,
                    skip_blocks=target.skip_blocks if target else 0,
                    urgency=urgency,
                )
                t1 = time.perf_counter()
                # A failed prefill shipped an incomplete KV: drop it (abort below).
                ok = sender is not None and out.finish_reason != "error"
                stats = await sender.finish() if ok and sender is not None else None
            finally:
                if sender is not None and stats is None:  # not finished: error or cancelled
                    await sender.abort()
            t2 = time.perf_counter()
            return worker_pb2.PrefillResponse(
                output=wire.token_chunk(out),
                compute_seconds=t1 - t0,
                transfer_wait_seconds=t2 - t1,
                kv_bytes=stats.bytes if stats else 0,
                transport=stats.transport if stats else "",
            )

    async def _open_sender(self, target: TransferTarget, pb: worker_pb2.KVTarget) -> KVSender:
        local = Endpoint(self.settings.kv_transports, self.settings.host_id)
        if pb.accepted_transports:
            remote = Endpoint(tuple(pb.accepted_transports), pb.host_id)
        else:
            remote = await self.peers.endpoint(target.address)
        name = select_transport(local, remote, target.transport)
        streams = target.num_streams or self.settings.kv_streams
        try:
            return KVSender(
                load_transport(name),
                target,
                self.layout,
                self.peers.push_kv(target.address, streams),
            )
        except TransferError:
            if name == "grpc" or target.transport:
                raise
            # e.g. /dev/shm is full: this transfer still works over the fallback.
            log.warning(
                "KV transport %s unavailable for %s; using grpc",
                name,
                target.request_id,
                exc_info=True,
            )
            return KVSender(
                load_transport("grpc"),
                target,
                self.layout,
                self.peers.push_kv(target.address, streams),
            )

    # ----- control -------------------------------------------------------
    async def Cancel(self, request, context):  # type: ignore[no-untyped-def]
        if request.request_id:
            await asyncio.to_thread(self.engine.abort, request.request_id)
        return worker_pb2.CancelResponse()

    async def SetRole(self, request, context):  # type: ignore[no-untyped-def]
        async with grpc_errors(context):
            if request.role not in ROLES:
                raise InvalidRequest(
                    "role", f"must be one of {', '.join(ROLES)}, got {request.role!r}"
                )
            self.draining = True
            try:
                await self.engine.set_role(request.role)
            finally:
                self.draining = False
            log.info("role is now %s", self.engine.role)
            return worker_pb2.SetRoleResponse(role=self.engine.role)

    async def Drain(self, request, context):  # type: ignore[no-untyped-def]
        await self.drain()
        return worker_pb2.DrainResponse()

    async def drain(self) -> None:
        """Stop admitting work and wait for in-flight work (also used on SIGTERM)."""
        self.draining = True
        await self.engine.drain()


def _discard(chunk: object) -> None:
    """KV sink of a prefill without a target (benchmarks): drop the chunks."""


async def _relay(stream: AsyncIterator[StepOutput]) -> AsyncIterator[worker_pb2.TokenChunk]:
    """Convert an engine stream; closing early (client gone) closes the engine
    stream, which aborts the request."""
    try:
        async for out in stream:
            yield wire.token_chunk(out)
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


async def start_server(service: WorkerService, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """Start serving `service`; returns the server and the bound port (port 0 picks one)."""
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(service, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    return server, bound
