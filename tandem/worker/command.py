"""`tandem worker`: one engine behind the gRPC WorkerService, plus /metrics
and /health over HTTP. argv -> WorkerConfig -> run; SIGTERM drains, then exits."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tandem.worker.config import ROLES, Role

if TYPE_CHECKING:
    from aiohttp import web

    from tandem.worker.config import EngineConfig
    from tandem.worker.service import WorkerService

log = logging.getLogger("tandem.worker")

_TRANSPORTS = ("cuda_ipc", "shm", "grpc")


@dataclass(frozen=True)
class WorkerConfig:
    model: str
    role: Role = "both"
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    block_size: int = 16
    num_kv_blocks: int | None = None
    max_num_batched_tokens: int = 2048
    kv_transports: tuple[str, ...] = _TRANSPORTS  # accepted for receiving, fastest first
    kv_streams: int = 4  # parallel PushKV streams per transfer
    drain_timeout_s: float = 30.0  # SIGTERM waits this long for in-flight work
    load_format: str = "safetensors"  # or "dummy": random weights (benchmarks)
    max_model_len: int | None = None  # cap the context below the model's own limit
    scheduling_policy: str = "priority"  # or "fcfs": arrival order, priorities ignored
    priority_aging_s: float = 30.0
    tpot_slo_s: float | None = None
    min_prefill_tokens: int = 16

    def __post_init__(self) -> None:
        if not (Path(self.model) / "config.json").is_file():
            raise ValueError(f"--model: {self.model!r} is not a model folder (no config.json)")
        if self.role not in ROLES:
            raise ValueError(f"--role: must be one of {', '.join(ROLES)}, got {self.role!r}")
        for name in ("port", "metrics_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise ValueError(f"--{name.replace('_', '-')}: {value} is not a TCP port")
        unknown = set(self.kv_transports) - set(_TRANSPORTS)
        if unknown or "grpc" not in self.kv_transports:
            raise ValueError(
                f"--kv-transports: choose from {', '.join(_TRANSPORTS)} and include grpc, "
                f"got {','.join(self.kv_transports)}"
            )
        if self.kv_streams < 1:
            raise ValueError(f"--kv-streams: must be >= 1, got {self.kv_streams}")
        if self.drain_timeout_s < 0:
            raise ValueError(f"--drain-timeout: must be >= 0, got {self.drain_timeout_s}")
        if self.tpot_slo_s is not None and not self.tpot_slo_s > 0:
            raise ValueError(f"--tpot-slo: must be > 0 seconds, got {self.tpot_slo_s}")
        if not self.priority_aging_s > 0:
            raise ValueError(f"--priority-aging: must be > 0 seconds, got {self.priority_aging_s}")
        if self.min_prefill_tokens < 1:
            raise ValueError(f"--min-prefill-tokens: must be >= 1, got {self.min_prefill_tokens}")
        self.engine_config()  # the engine's own checks (block size, batch size, ...)

    def engine_config(self) -> EngineConfig:
        from tandem.worker.config import EngineConfig

        return EngineConfig(
            model=self.model,
            dtype=self.dtype,
            device=self.device,
            block_size=self.block_size,
            num_kv_blocks=self.num_kv_blocks,
            max_num_batched_tokens=self.max_num_batched_tokens,
            role=self.role,
            load_format=self.load_format,
            max_model_len=self.max_model_len,
            scheduling_policy=self.scheduling_policy,  # type: ignore[arg-type]
            priority_aging_s=self.priority_aging_s,
            tpot_slo_s=self.tpot_slo_s,
            min_prefill_tokens=self.min_prefill_tokens,
        )


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "worker",
        help="serve one engine (prefill, decode or both) over gRPC",
        description="Serve one engine over gRPC (tandem.v1.WorkerService), "
        "with Prometheus /metrics and /health on --metrics-port.",
    )
    p.add_argument("--model", required=True, metavar="DIR", help="Hugging Face-format model folder")
    p.add_argument("--role", choices=ROLES, default="both")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=50051, help="gRPC port")
    p.add_argument("--metrics-port", type=int, default=None, help="HTTP port for /metrics, /health")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    p.add_argument(
        "--num-kv-blocks", type=int, default=None, help="KV pool size (default: sized from memory)"
    )
    p.add_argument("--max-num-batched-tokens", type=int, default=2048, help="token budget per step")
    p.add_argument(
        "--kv-transports",
        default=",".join(_TRANSPORTS),
        help="KV transports accepted, fastest first (grpc is required)",
    )
    p.add_argument("--kv-streams", type=int, default=4, help="parallel PushKV streams per transfer")
    p.add_argument(
        "--drain-timeout", type=float, default=30.0, help="seconds SIGTERM waits for work"
    )
    p.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        metavar="N",
        help="longest context (prompt + output) to serve; default: the model's own limit",
    )
    p.add_argument(
        "--load-format",
        choices=("safetensors", "dummy"),
        default="safetensors",
        help="dummy: random weights of the config's shape, no *.safetensors needed (benchmarks)",
    )
    _traffic_flags(p)
    p.set_defaults(func=_run)


def _traffic_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("traffic control inside the engine")
    g.add_argument(
        "--scheduling-policy",
        choices=("priority", "fcfs"),
        default="priority",
        help="priority: by request priority, then deadline, then arrival; fcfs: arrival only",
    )
    g.add_argument(
        "--priority-aging",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="a request this long in the engine is served ahead of all younger ones (starvation bound)",
    )
    g.add_argument(
        "--tpot-slo",
        type=float,
        default=None,
        metavar="SECONDS",
        help="time per output token to keep for running decodes: caps the prefill share of each "
        "step, from step times measured online (default: no cap)",
    )
    g.add_argument(
        "--min-prefill-tokens",
        type=int,
        default=16,
        metavar="N",
        help="prefill tokens per step even when the decodes alone use up --tpot-slo",
    )


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    return WorkerConfig(
        model=args.model,
        role=args.role,
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        device=args.device,
        dtype=args.dtype,
        block_size=args.block_size,
        num_kv_blocks=args.num_kv_blocks,
        max_num_batched_tokens=args.max_num_batched_tokens,
        kv_transports=tuple(t for t in args.kv_transports.split(",") if t),
        kv_streams=args.kv_streams,
        drain_timeout_s=args.drain_timeout,
        load_format=args.load_format,
        max_model_len=args.max_model_len,
        scheduling_policy=args.scheduling_policy,
        priority_aging_s=args.priority_aging,
        tpot_slo_s=args.tpot_slo,
        min_prefill_tokens=args.min_prefill_tokens,
    )


def _run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as exc:
        raise SystemExit(f"tandem worker: {exc}") from None
    asyncio.run(serve(config))
    # Everything the worker owns is closed by now. Skip the interpreter's
    # teardown: torch's static destructors alone take seconds at exit, which
    # would stretch every restart and every `tandem serve` shutdown.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


async def serve(config: WorkerConfig) -> None:
    """Run until SIGTERM/SIGINT, then drain (bounded) and stop."""
    from tandem.worker.async_engine import AsyncEngine
    from tandem.worker.kv_transfer import available_transports, load_transport
    from tandem.worker.kv_transfer_peers import PeerChannels
    from tandem.worker.kv_transfer_segments import sweep_stale_segments
    from tandem.worker.service import ServiceSettings, WorkerService, host_id, start_server

    sweep_stale_segments()
    engine = AsyncEngine.start(config.engine_config())
    device = engine.device
    if device.startswith("cuda"):
        import torch

        # Give back what loading freed (e.g. float32 staging of the weights): a
        # second worker on the same GPU needs it.
        torch.cuda.empty_cache()
    # cuda_ipc maps this engine's KV cache: only when it lives on a GPU.
    transports = tuple(
        t for t in available_transports(config.kv_transports) if t != "cuda_ipc" or device != "cpu"
    )
    settings = ServiceSettings(transports, host_id(), device, config.kv_streams)
    peers = PeerChannels()
    service = WorkerService(engine, settings, peers)
    server, port = await start_server(service, config.host, config.port)
    http = await _start_http(service, config.host, config.metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "worker %s (%s, %s) serving gRPC on %s:%d",
        engine.model_info.name,
        engine.role,
        device,
        config.host,
        port,
    )
    try:
        await stop.wait()
        log.info("stopping: draining in-flight work (up to %.0fs)", config.drain_timeout_s)
        try:
            await asyncio.wait_for(service.drain(), config.drain_timeout_s)
        except TimeoutError:
            log.warning("drain timed out; stopping with work in flight")
    finally:
        await server.stop(grace=2.0)
        if http is not None:
            await http.cleanup()
        await peers.close()
        await engine.shutdown()
        for name in settings.kv_transports:
            load_transport(name).shutdown()
    log.info("worker stopped")


async def _start_http(service: WorkerService, host: str, port: int | None) -> web.AppRunner | None:
    if port is None:
        return None
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def health(_request: web.Request) -> web.Response:
        if not service.engine.alive:
            state = "not_serving"  # the engine's step thread has stopped
        else:
            state = "draining" if service.draining else "serving"
        body = {"status": state, "role": service.engine.role}
        return web.json_response(body, status=200 if state == "serving" else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
