"""`tandem router` and `tandem bench serve`: argv -> config, nothing else."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from tandem.router.discovery import parse_addresses
from tandem.router.priority import DEFAULT_CLASSES, parse_classes


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("router", help="OpenAI-compatible front door over prefill/decode workers")
    p.add_argument("--workers", default="", help="HOST:PORT,... of workers (static discovery)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (OpenAI-compatible API)")
    p.add_argument("--grpc-port", type=int, default=None, help="also serve RouterService.Generate on this port")
    p.add_argument("--model", default=None, help="model folder for the tokenizer and chat template")
    p.add_argument("--served-model-name", default=None, help="name clients use (default: the workers' model name)")
    p.add_argument("--min-prompt-tokens", type=int, default=256,
                   help="prompts whose uncached part is shorter run colocated on the decode worker")
    p.add_argument("--discovery", choices=("static", "kube"), default="static")
    p.add_argument("--pool", default=None, help="InferencePool name (kube discovery)")
    p.add_argument("--namespace", default=None, help="namespace (kube discovery)")
    p.add_argument("--priority-classes", default=None,
                   help="NAME:PRIORITY[:TTFT_SLO[:TPOT_SLO]],... e.g. interactive:100:1s:50ms,batch:10")
    p.add_argument("--default-priority-class", default=None,
                   help="class of requests that name none (default: the least urgent)")
    p.add_argument("--max-inflight-per-worker", type=int, default=64)
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds; bounds every worker call")
    p.add_argument("--queue-timeout", type=float, default=30.0, help="seconds a request may wait for capacity")
    p.add_argument("--traffic-policy", choices=("priority", "fcfs"), default="priority",
                   help="priority: queues and workers serve by class priority; fcfs: arrival order everywhere")
    p.add_argument("--max-queue", type=int, default=1024,
                   help="waiters per queue before the least urgent one is shed with 429")
    p.add_argument("--max-prefills-per-worker", type=int, default=8,
                   help="prompts in flight per prefill worker; more wait in the router's prompt queue")
    p.set_defaults(func=_run_router)
    _register_bench(subparsers)


def _register_bench(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    # `bench` may be registered by another module too; add `serve` under the existing one then.
    bench = subparsers.choices.get("bench")
    if bench is None:
        bench = subparsers.add_parser("bench", help="benchmarks")
    inner = next((a for a in bench._actions if isinstance(a, argparse._SubParsersAction)), None)
    if inner is None:
        inner = bench.add_subparsers(dest="bench_command", metavar="BENCH")
    from tandem.loadgen.command import add_arguments

    p = inner.add_parser("serve", help="replay a trace against an OpenAI-compatible server")
    add_arguments(p)


def config_from_args(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from tandem.router.service import RouterConfig

    classes = parse_classes(args.priority_classes) if args.priority_classes else DEFAULT_CLASSES
    return RouterConfig(
        workers=parse_addresses(args.workers) if args.workers else (),
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port,
        model_dir=args.model,
        served_name=args.served_model_name,
        discovery=args.discovery,
        pool=args.pool,
        namespace=args.namespace,
        min_prompt_tokens=args.min_prompt_tokens,
        priority_classes=classes,
        default_priority=args.default_priority_class,
        max_inflight_per_worker=args.max_inflight_per_worker,
        request_timeout_s=args.request_timeout,
        queue_timeout_s=args.queue_timeout,
        traffic_policy=args.traffic_policy,
        max_queue=args.max_queue,
        max_prefills_per_worker=args.max_prefills_per_worker,
    )


def _run_router(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as exc:
        raise SystemExit(f"tandem router: {exc}") from None
    asyncio.run(_serve(config))
    return 0


async def _serve(config) -> None:  # type: ignore[no-untyped-def]
    from tandem.router.service import Router

    router = await Router.start(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await router.stop()
