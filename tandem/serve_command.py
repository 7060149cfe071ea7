"""`tandem serve`: prefill + decode workers and a router on this machine (or
on a Ray cluster), ready with one command.

Starts the workers, waits until every one is healthy, starts the router,
waits until it answers, prints ONE line with the URL, restarts any process
that crashes (with backoff), and stops everything on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from tandem.launch.local import LocalLauncher
    from tandem.launch.ray import RayLauncher
    from tandem.launch.spec import WorkerSpec
    from tandem.launch.supervisor import Supervised, SupervisedWorker

from tandem.launch.scaling import AutoscaleConfig

log = logging.getLogger("tandem.serve")

Launcher = Literal["local", "ray"]


@dataclass(frozen=True)
class ServeConfig:
    model: str | None = None  # None: the tiny demo model
    prefill: int = 1  # 0: colocated `both` workers only
    decode: int = 1
    host: str = "127.0.0.1"
    port: int = 8000
    min_prompt_tokens: int = 256
    device: str = "auto"  # auto | cpu | cuda
    launcher: Launcher = "local"
    ray_address: str | None = None
    ready_timeout_s: float = 300.0
    worker_options: tuple[str, ...] = ()  # extra `tandem worker` flags
    autoscale: AutoscaleConfig | None = None  # --autoscale: flip workers between roles

    def __post_init__(self) -> None:
        if self.model is not None and not (Path(self.model) / "config.json").is_file():
            raise ValueError(f"--model: {self.model!r} is not a model folder (no config.json)")
        if self.prefill < 0:
            raise ValueError(f"--prefill: must be >= 0, got {self.prefill}")
        if self.decode < 1:
            raise ValueError(f"--decode: must be >= 1, got {self.decode}")
        if not 0 < self.port <= 65535:
            raise ValueError(f"--port: {self.port} is not a TCP port")
        if self.min_prompt_tokens < 0:
            raise ValueError(f"--min-prompt-tokens: must be >= 0, got {self.min_prompt_tokens}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device: must be auto, cpu or cuda, got {self.device!r}")
        if self.launcher not in ("local", "ray"):
            raise ValueError(f"--launcher: must be local or ray, got {self.launcher!r}")
        if self.ray_address is not None and self.launcher != "ray":
            raise ValueError("--ray-address: only with --launcher ray")
        if self.ready_timeout_s <= 0:
            raise ValueError(f"--ready-timeout: must be > 0, got {self.ready_timeout_s}")
        if self.autoscale is not None:
            if self.launcher != "local":
                raise ValueError(
                    "--autoscale: only with --launcher local (it scrapes local workers)"
                )
            if self.prefill < 1:
                raise ValueError(
                    f"--prefill: --autoscale needs at least 1 prefill worker, got {self.prefill}"
                )

    @property
    def workers(self) -> int:
        return self.prefill + self.decode


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "serve",
        help="serve a model with prefill/decode workers and a router on this machine",
        description="Start N prefill + M decode workers and a router; print the URL when ready. "
        "Without --model, serves a tiny random-weight demo model.",
    )
    p.add_argument("--model", default=None, metavar="DIR", help="model folder (default: tiny demo)")
    p.add_argument("--prefill", type=int, default=None,
                   help="prefill workers (default 1; 0: colocated workers; with --autoscale: "
                   "the initial split, default half of --workers)")  # fmt: skip
    p.add_argument("--decode", type=int, default=None,
                   help="decode workers (default 1; with --autoscale: --workers minus --prefill)")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="router address to listen on")
    p.add_argument("--port", type=int, default=8000, help="router HTTP port")
    p.add_argument("--min-prompt-tokens", type=int, default=256,
                   help="shorter (uncached) prompts prefill on the decode worker")  # fmt: skip
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--launcher", choices=("local", "ray"), default="local")
    p.add_argument("--ray-address", default=None, help="join this Ray cluster (--launcher ray)")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to become ready")
    p.add_argument(
        "--num-kv-blocks",
        type=int,
        default=None,
        help="KV pool size of each worker (default: sized from memory)",
    )
    _autoscale_arguments(p)
    p.set_defaults(func=_run)


_D = AutoscaleConfig()
#: --autoscale knobs: flag, type, default, help (defaults are the planner's Policy).
_AUTOSCALE_FLAGS: tuple[tuple[str, type, object, str], ...] = (
    ("--ttft-slo", float, _D.ttft_slo_s, "TTFT p99 target, seconds (default: unused)"),
    ("--tpot-slo", float, _D.tpot_slo_s, "TPOT p99 target, seconds (default: unused)"),
    ("--target-busy", float, _D.target_busy, "prefill workers' busy fraction at target"),
    ("--target-kv-usage", float, _D.target_kv_usage, "decode workers' KV-block usage at target"),
    ("--tolerance", float, _D.tolerance, "pressure within 1 +- this changes nothing"),
    ("--scale-interval", float, _D.interval_s, "seconds between scrapes (the signal window)"),
    ("--scale-up-window", float, _D.scale_up_window_s, "seconds a growth must be asked for"),
    ("--scale-down-window", float, _D.scale_down_window_s,
     "seconds a shrink (the donor side of a flip) must be asked for"),
    ("--cooldown", float, _D.cooldown_s, "seconds after a change before the next one"),
    ("--min-requests", int, _D.min_requests, "finished requests a window needs for TTFT/TPOT"),
    ("--flip-timeout", float, _D.flip_timeout_s, "longest wait for a drain and SetRole, seconds"),
)  # fmt: skip


def _autoscale_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("autoscaling")
    g.add_argument(
        "--autoscale",
        action="store_true",
        help="run the planner over the workers; flip them between prefill and decode",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        help="workers with --autoscale (the GPU budget; default --prefill + --decode)",
    )
    for flag, kind, default, text in _AUTOSCALE_FLAGS:
        shown = "" if default is None else f" (default {default})"
        g.add_argument(flag, type=kind, default=default, help=text + shown)  # fmt: skip


def _split(args: argparse.Namespace) -> tuple[int, int]:
    """Prefill and decode workers to start: the plain defaults, or --workers split
    (evenly unless --prefill or --decode says otherwise)."""
    if not args.autoscale:
        if args.workers is not None:
            raise ValueError("--workers: only with --autoscale (else use --prefill/--decode)")
        return _or(args.prefill, 1), _or(args.decode, 1)
    n = args.workers if args.workers is not None else _or(args.prefill, 1) + _or(args.decode, 1)
    if n < 2:
        raise ValueError(f"--workers: --autoscale needs at least 2 (one per role), got {n}")
    if args.prefill is not None:
        prefill = args.prefill
    else:
        prefill = n - args.decode if args.decode is not None else n // 2
    decode = _or(args.decode, n - prefill)
    if prefill + decode != n:
        raise ValueError(f"--workers: {n} is not --prefill {prefill} + --decode {decode}")
    return prefill, decode


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def _autoscale_config(args: argparse.Namespace) -> AutoscaleConfig | None:
    if not args.autoscale:
        return None
    return AutoscaleConfig(
        interval_s=args.scale_interval,
        ttft_slo_s=args.ttft_slo,
        tpot_slo_s=args.tpot_slo,
        target_busy=args.target_busy,
        target_kv_usage=args.target_kv_usage,
        tolerance=args.tolerance,
        scale_up_window_s=args.scale_up_window,
        scale_down_window_s=args.scale_down_window,
        cooldown_s=args.cooldown,
        min_requests=args.min_requests,
        flip_timeout_s=args.flip_timeout,
    )


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    prefill, decode = _split(args)
    return ServeConfig(
        model=args.model,
        prefill=prefill,
        decode=decode,
        host=args.host,
        port=args.port,
        min_prompt_tokens=args.min_prompt_tokens,
        device=args.device,
        launcher=args.launcher,
        ray_address=args.ray_address,
        ready_timeout_s=args.ready_timeout,
        worker_options=()
        if args.num_kv_blocks is None
        else ("--num-kv-blocks", str(args.num_kv_blocks)),
        autoscale=_autoscale_config(args),
    )


def _run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as exc:
        raise SystemExit(f"tandem serve: {exc}") from None
    return asyncio.run(serve(config))


def _gpus(device: str) -> list[str]:
    from tandem.launch.spec import count_gpus, visible_gpus

    if device == "cpu":
        return []
    gpus = visible_gpus(os.environ, count_gpus())
    if device == "cuda" and not gpus:
        raise SystemExit("tandem serve: --device cuda but no GPU is visible")
    return gpus


def _make_launcher(config: ServeConfig) -> LocalLauncher | RayLauncher:
    if config.launcher == "ray":
        from tandem.launch.ray import RayLauncher

        return RayLauncher(config.ray_address)
    from tandem.launch.local import LocalLauncher

    return LocalLauncher()


async def serve(config: ServeConfig) -> int:
    """Run until Ctrl-C/SIGTERM; 0 on a clean stop, 1 if start-up failed."""
    from tandem.launch.local import LocalProcess
    from tandem.launch.readiness import NotReady, http_ready, wait_ready, worker_ready
    from tandem.launch.spec import plan_workers, worker_roles
    from tandem.launch.supervisor import stop_all

    t0 = time.monotonic()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    model = config.model or str(await asyncio.to_thread(_tiny_model))
    gpus = _gpus(config.device)
    roles = worker_roles(config.prefill, config.decode)
    if len(roles) > len(gpus) > 0:
        log.warning(
            "%d workers on %d GPUs: some share a GPU (pass --num-kv-blocks to split its memory)",
            len(roles), len(gpus),
        )  # fmt: skip
    specs = plan_workers(model, roles, gpus, config.worker_options)
    if config.autoscale is not None:
        # Flexible workers change role: name them by position, not by their first role.
        specs = [dataclasses.replace(s, name=f"worker-{i}") for i, s in enumerate(specs)]
    launcher = await asyncio.to_thread(_make_launcher, config)
    for sig in (signal.SIGINT, signal.SIGTERM):  # again: ray.init replaces SIGTERM's handler
        loop.add_signal_handler(sig, stop.set)
    procs: list[Supervised] = []
    try:
        workers = [await asyncio.to_thread(_worker, launcher, s) for s in specs]
        procs.extend(workers)
        for w in workers:
            await asyncio.to_thread(w.start)
        router = LocalProcess("router", _router_argv(config, model, [w.address for w in workers]))
        ready = [
            wait_ready(w.name, _probe(worker_ready, w.address), w.poll, config.ready_timeout_s)
            for w in workers
        ]
        if not await _until_stopped(asyncio.gather(*ready), stop):
            return 0
        procs.append(router)
        router.start()
        url = f"http://{config.host}:{config.port}"
        probe = _probe(http_ready, f"{url}/health")
        if not await _until_stopped(
            wait_ready("router", probe, router.poll, config.ready_timeout_s), stop
        ):
            return 0
        log.info("ready in %.1fs", time.monotonic() - t0)
        print(f"Tandem serving {Path(model).name} at {url}/v1", flush=True)
        await _watch(config, procs, workers, stop)
        return 0
    except NotReady as exc:
        log.error("start-up failed: %s", exc)
        return 1
    finally:
        # Router first: it stops taking requests before the workers go away.
        await stop_all(list(reversed(procs)))
        await asyncio.to_thread(launcher.close)


async def _watch(
    config: ServeConfig,
    procs: list[Supervised],
    workers: list[SupervisedWorker],
    stop: asyncio.Event,
) -> None:
    """Supervise the processes; with --autoscale, run the planner's loop beside."""
    from tandem.launch.supervisor import Supervisor

    if config.autoscale is None:
        await Supervisor(procs).watch(stop)
        return
    from tandem.launch.autoscale import Autoscaler, Member
    from tandem.launch.local import LocalWorker

    local = [w for w in workers if isinstance(w, LocalWorker)]  # --autoscale implies local
    members = [Member(w.name, w.address, w.metrics_url) for w in local]
    host = "127.0.0.1" if config.host in ("0.0.0.0", "") else config.host
    scaler = Autoscaler(config.autoscale, members, f"http://{host}:{config.port}/metrics")
    p = scaler.policy
    log.info(
        "autoscale: %d workers (%d prefill, %d decode), interval %gs, windows up %gs / down %gs, "
        "cooldown %gs", len(members), config.prefill, config.decode, config.autoscale.interval_s,
        p.scale_up_window_s, p.scale_down_window_s, p.cooldown_s,
    )  # fmt: skip
    await asyncio.gather(Supervisor(procs).watch(stop), scaler.run(stop))


def _worker(launcher: LocalLauncher | RayLauncher, spec: WorkerSpec) -> SupervisedWorker:
    return launcher.worker(spec)


def _tiny_model() -> Path:
    from tandem.models.tiny import ensure_tiny_model

    return ensure_tiny_model()


def _router_argv(config: ServeConfig, model: str, workers: list[str]) -> list[str]:
    return [
        "router",
        "--workers", ",".join(workers),
        "--host", config.host,
        "--port", str(config.port),
        "--min-prompt-tokens", str(config.min_prompt_tokens),
        "--model", model,
    ]  # fmt: skip


def _probe(check, target: str):  # type: ignore[no-untyped-def]
    return lambda: check(target)


async def _until_stopped(awaitable, stop: asyncio.Event) -> bool:  # type: ignore[no-untyped-def]
    """Await `awaitable` unless `stop` is set first; True if it completed."""
    task = asyncio.ensure_future(awaitable)
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        stopper.cancel()
        task.result()  # re-raise NotReady
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    log.info("stopping before ready")
    return False
