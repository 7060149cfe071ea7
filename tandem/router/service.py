"""The router process assembled: discovery, registry, traffic control,
orchestration, and the HTTP and gRPC front doors. `tandem router` and
`tandem serve` both start it through `Router.start`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import grpc
from aiohttp import web

from tandem.router.discovery import Discovery, StaticDiscovery
from tandem.router.errors import BadRequest, RouterError, WorkerTimeout
from tandem.router.generation import Detokenizer, Generation
from tandem.router.grpc_server import start_grpc
from tandem.router.http_server import Frontend, FrontendConfig, build_app
from tandem.router.metrics import RouterMetrics
from tandem.router.orchestrator import Orchestrator, RoutingConfig
from tandem.router.priority import DEFAULT_CLASSES, PriorityClass, default_class
from tandem.router.registry import WorkerRegistry
from tandem.router.text_codec import TextCodec, TokenizerCodec
from tandem.router.traffic import TrafficController, TrafficSettings
from tandem.router.worker_client import WorkerClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouterConfig:
    workers: tuple[str, ...] = ()
    host: str = "0.0.0.0"
    port: int = 8000
    grpc_port: int | None = None
    model_dir: str | None = None
    served_name: str | None = None
    discovery: Literal["static", "kube"] = "static"
    pool: str | None = None
    namespace: str | None = None
    min_prompt_tokens: int = 256
    priority_classes: tuple[PriorityClass, ...] = field(default=DEFAULT_CLASSES)
    default_priority: str | None = None
    max_inflight_per_worker: int = 64
    request_timeout_s: float = 600.0
    queue_timeout_s: float = 30.0
    poll_s: float = 0.5
    traffic_policy: Literal["priority", "fcfs"] = "priority"  # fcfs: arrival order everywhere
    max_queue: int = 1024  # per queue, before the least urgent waiter is shed (429)
    max_prefills_per_worker: int = 8  # prompts in flight per prefill worker

    def __post_init__(self) -> None:
        if self.discovery == "static" and not self.workers:
            raise ValueError("static discovery needs --workers HOST:PORT,...")
        if self.discovery == "kube" and not (self.pool and self.namespace):
            raise ValueError("--discovery kube needs --pool and --namespace")
        if self.min_prompt_tokens < 0:
            raise ValueError(f"--min-prompt-tokens must be >= 0, got {self.min_prompt_tokens}")
        if self.max_inflight_per_worker < 1:
            raise ValueError("--max-inflight-per-worker must be >= 1")
        if not self.request_timeout_s > 0 or not self.queue_timeout_s > 0:
            raise ValueError("timeouts must be > 0")
        if self.traffic_policy not in ("priority", "fcfs"):
            raise ValueError(f"--traffic-policy must be priority or fcfs, got {self.traffic_policy!r}")
        if self.max_queue < 1:
            raise ValueError(f"--max-queue must be >= 1, got {self.max_queue}")
        if self.max_prefills_per_worker < 1:
            raise ValueError(f"--max-prefills-per-worker must be >= 1, got {self.max_prefills_per_worker}")
        default_class(self.priority_classes, self.default_priority)  # raises for an unknown name


class _NoText:
    """Without a tokenizer folder the router serves token-id prompts only."""

    def encode(self, text: str) -> list[int]:
        raise BadRequest("this router has no tokenizer (start it with --model DIR); send token ids", param="prompt")

    def encode_chat(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        raise BadRequest("chat needs the model's tokenizer; start the router with --model DIR", param="messages")

    def detokenizer(self, prompt: Sequence[int]) -> Detokenizer:
        return _Silent()


class _Silent:
    def add(self, token_ids: Sequence[int]) -> str:
        return ""

    def flush(self) -> str:
        return ""


def make_discovery(config: RouterConfig) -> Discovery:
    if config.discovery == "kube":
        from tandem.router.discovery_kube import EndpointSliceDiscovery

        assert config.namespace is not None and config.pool is not None  # checked in RouterConfig
        return EndpointSliceDiscovery(namespace=config.namespace, pool=config.pool)

    async def probe(address: str) -> tuple[bool, str] | None:
        client = WorkerClient(address, address)
        try:
            return await client.health(timeout=3.0)
        except WorkerTimeout:
            return None
        finally:
            await client.close()

    return StaticDiscovery(config.workers, probe)


class Router:
    def __init__(self, config: RouterConfig, discovery: Discovery, codec: TextCodec) -> None:
        self.config = config
        self.discovery = discovery
        self.metrics = RouterMetrics()
        for c in config.priority_classes:  # every class shows on /metrics from the start
            self.metrics.queue_depth.labels(priority=c.name).set(0)
            self.metrics.prefill_queue_depth.labels(priority=c.name).set(0)
        self.registry = WorkerRegistry(discovery, poll_s=config.poll_s)
        routing = RoutingConfig(
            config.min_prompt_tokens,
            config.max_inflight_per_worker,
            config.request_timeout_s,
            config.max_prefills_per_worker,
        )
        self.traffic = TrafficController(
            capacity=lambda: self.orchestrator.capacity(),
            prefill_workers=lambda: self.orchestrator.prefill_parallelism(),
            metrics=self.metrics,
            settings=TrafficSettings(config.queue_timeout_s, config.max_queue, config.traffic_policy),
            prompt_capacity=lambda: self.orchestrator.prompt_capacity(),
        )
        self.orchestrator = Orchestrator(self.registry, self.traffic, routing)
        self.registry.set_on_change(self.traffic.kick)
        self.generation = Generation(self.orchestrator, codec.detokenizer, self.metrics)
        frontend_config = FrontendConfig(
            classes=config.priority_classes,
            default_class=default_class(config.priority_classes, config.default_priority),
            request_timeout_s=config.request_timeout_s,
            served_name=config.served_name,
        )
        self.frontend = Frontend(self.generation, codec, self.registry, frontend_config)
        self._runner: web.AppRunner | None = None
        self._grpc: grpc.aio.Server | None = None
        self.http_port = 0
        self.grpc_port: int | None = None

    @classmethod
    async def start(
        cls, config: RouterConfig, discovery: Discovery | None = None, codec: TextCodec | None = None
    ) -> Router:
        if codec is None:
            codec = TokenizerCodec.from_dir(config.model_dir) if config.model_dir else _NoText()
        router = cls(config, discovery or make_discovery(config), codec)
        await router._start()
        return router

    async def _start(self) -> None:
        await self.discovery.start()
        await self.registry.start()
        try:
            await self.registry.model_facts()
        except RouterError as exc:
            log.warning("model facts not known yet (%s); will ask again per request", exc)
        # handler_cancellation: a client that hangs up cancels its handler, which
        # cancels the worker calls so the workers free the request's blocks.
        self._runner = web.AppRunner(build_app(self.frontend), handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        self.http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        if self.config.grpc_port is not None:
            self._grpc, self.grpc_port = await start_grpc(self.frontend, self.config.host, self.config.grpc_port)
        log.info("router serving HTTP on %s:%d", self.config.host, self.http_port)

    async def stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        if self._runner is not None:
            await self._runner.cleanup()
        await self.registry.stop()
        await self.discovery.stop()
