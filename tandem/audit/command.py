"""`tandem audit`: measure a live pool over a window and report (thin I/O shell)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tandem.audit.figures import AuditFigures, audit
from tandem.audit.report import png, table
from tandem.audit.source import Scrape, SourceError, scrape_pages, scrape_prometheus
from tandem.planner import Policy
from tandem.planner.scrape import pool_signals


@dataclass(frozen=True)
class AuditConfig:
    routers: tuple[str, ...] = ()
    workers: tuple[str, ...] = ()
    prometheus: str | None = None
    selector: str = ""
    window_s: float = 30.0
    policy: Policy = field(default_factory=Policy)

    def __post_init__(self) -> None:
        if self.prometheus is None and not self.workers:
            raise ValueError(
                "give the pool's --worker /metrics URLs (and --router), or --prometheus"
            )
        if self.prometheus is not None and (self.workers or self.routers):
            raise ValueError("--prometheus replaces --router/--worker: give one or the other")
        if not self.window_s > 0:
            raise ValueError(f"--window: must be > 0, got {self.window_s}")


def metrics_url(text: str) -> str:
    """`host:port` or `http://host:port` -> `http://host:port/metrics`."""
    url = text if "://" in text else f"http://{text}"
    scheme, _, rest = url.partition("://")
    if scheme not in ("http", "https"):
        raise ValueError(f"{text!r}: only http(s) URLs")
    return url if "/" in rest else f"{url}/metrics"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "audit",
        help="measure a live pool's utilization per role and recommend a split and size",
        description="Scrape a pool's routers and workers (or a Prometheus server) over a "
        "window; report utilization and pressure per role, P/D imbalance, SLO attainment, "
        "and the split and GPU count that would run each role at target.",
    )
    p.add_argument(
        "--router", action="append", default=[], metavar="URL", help="a router's /metrics"
    )
    p.add_argument(
        "--worker", action="append", default=[], metavar="URL", help="a worker's /metrics"
    )
    p.add_argument("--prometheus", default=None, metavar="URL", help="a Prometheus server instead")
    p.add_argument("--selector", default="", help='extra label matchers, e.g. tandem_pool="chat"')
    p.add_argument("--window", type=float, default=30.0, help="seconds to measure over")
    p.add_argument("--ttft-slo", type=float, default=None, metavar="S")
    p.add_argument("--tpot-slo", type=float, default=None, metavar="S")
    p.add_argument("--target-busy", type=float, default=0.8, help="prefill busy fraction at target")
    p.add_argument("--target-kv", type=float, default=0.8, help="decode KV usage at target")
    p.add_argument("--out", default=None, metavar="FILE.json")
    p.add_argument("--png", default=None, metavar="FILE.png")
    p.set_defaults(func=_run)


def config_from_args(args: argparse.Namespace) -> AuditConfig:
    policy = Policy(
        ttft_slo_s=args.ttft_slo,
        tpot_slo_s=args.tpot_slo,
        target_busy=args.target_busy,
        target_kv_usage=args.target_kv,
    )
    return AuditConfig(
        routers=tuple(metrics_url(u) for u in args.router),
        workers=tuple(metrics_url(u) for u in args.worker),
        prometheus=args.prometheus,
        selector=args.selector,
        window_s=args.window,
        policy=policy,
    )


def measure(config: AuditConfig) -> tuple[AuditFigures, tuple[str, ...]]:
    if config.prometheus is not None:
        end = time.time()
        first = scrape_prometheus(config.prometheus, config.selector, end - config.window_s)
        second = scrape_prometheus(config.prometheus, config.selector, end)
    else:
        first = scrape_pages(config.routers, config.workers)
        time.sleep(config.window_s)
        second = scrape_pages(config.routers, config.workers)
    return _figures(config, first, second)


def _figures(config: AuditConfig, a: Scrape, b: Scrape) -> tuple[AuditFigures, tuple[str, ...]]:
    workers = [(n, a.workers[n], b.workers[n]) for n in b.workers if n in a.workers]
    routers = [(a.routers[n], b.routers[n]) for n in b.routers if n in a.routers]
    if not workers:
        raise SourceError("no worker answered twice: " + "; ".join(a.missing + b.missing))
    signals = pool_signals(workers, routers, config.window_s)
    missing = tuple(dict.fromkeys(a.missing + b.missing))
    return audit(config.policy, signals, routers), missing


def _run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        figures, missing = measure(config)
    except (ValueError, SourceError) as exc:
        print(f"tandem audit: {exc}", file=sys.stderr)
        return 1
    print(table(figures, missing))
    if args.out:
        report = {**figures.as_json(), "did_not_answer": list(missing)}
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    if args.png:
        png(figures, Path(args.png))
    return 0
