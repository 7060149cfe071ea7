"""`tandem bench serve`: open-loop replay of a trace (or a Poisson workload)."""

from __future__ import annotations

import asyncio
import json
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from tandem.loadgen import report
from tandem.loadgen.client import prompt_ids, send
from tandem.loadgen.report import Result
from tandem.loadgen.trace import TraceRequest, clip, poisson, read_trace


@dataclass(frozen=True)
class BenchConfig:
    url: str
    out: str
    trace: str | None = None
    time_scale: float = 1.0
    max_requests: int | None = None
    rate: float | None = None
    prompt_tokens: int = 512
    output_tokens: int = 128
    slo_ttft_s: float = 1.0
    slo_tpot_s: float = 0.1
    plot: str | None = None
    note: str | None = None
    timeout_s: float = 600.0
    seed: int = 0
    token_id_range: tuple[int, int] = (10, 1000)

    def __post_init__(self) -> None:
        if self.trace is None and self.rate is None:
            raise ValueError("give --trace FILE or --rate R (synthetic Poisson)")
        if self.max_requests is not None and self.max_requests < 1:
            raise ValueError("--max-requests must be >= 1")
        lo, hi = self.token_id_range
        if not 0 <= lo < hi:
            raise ValueError(f"token id range must be LO:HI with 0 <= LO < HI, got {lo}:{hi}")


async def _server_model(session: aiohttp.ClientSession, url: str) -> tuple[str, int | None]:
    async with session.get(f"{url}/v1/models", timeout=aiohttp.ClientTimeout(total=30)) as resp:
        resp.raise_for_status()
        entry = (await resp.json())["data"][0]
    return str(entry["id"]), entry.get("max_model_len")


def _workload(cfg: BenchConfig) -> list[TraceRequest]:
    if cfg.trace is not None:
        return read_trace(cfg.trace, cfg.time_scale, cfg.max_requests)
    assert cfg.rate is not None
    return poisson(cfg.rate, cfg.max_requests or 100, cfg.prompt_tokens, cfg.output_tokens, cfg.seed)


class _Progress:
    def __init__(self, total: int) -> None:
        self.total, self.done, self.failed, self.started = total, 0, 0, time.monotonic()

    def update(self, r: Result) -> None:
        self.done += 1
        self.failed += 0 if r.ok else 1
        width = 30
        filled = width * self.done // max(self.total, 1)
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
            f"failed {self.failed} {time.monotonic() - self.started:6.1f}s"
        )
        sys.stderr.flush()
        if self.done == self.total:
            sys.stderr.write("\n")


async def run(cfg: BenchConfig) -> dict[str, object]:
    url = cfg.url.rstrip("/")
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        model, max_model_len = await _server_model(session, url)
        workload = _workload(cfg)
        clipping = None
        if max_model_len:
            workload, clipping = clip(workload, int(max_model_len))
        rng = random.Random(cfg.seed)
        prompts = [prompt_ids(r.prompt_tokens, rng, *cfg.token_id_range) for r in workload]
        progress = _Progress(len(workload))
        started = time.monotonic()

        async def one(r: TraceRequest, prompt: list[int]) -> Result:
            await asyncio.sleep(max(0.0, started + r.at_s - time.monotonic()))
            result = await send(session, url, model, r, prompt, started, cfg.timeout_s)
            progress.update(result)
            return result

        results = await asyncio.gather(*(one(r, p) for r, p in zip(workload, prompts, strict=True)))
        duration = time.monotonic() - started
    summary = report.summarize(list(results), duration, cfg.slo_ttft_s, cfg.slo_tpot_s)
    return {
        "benchmark": "tandem bench serve",
        "config": {**asdict(cfg), "token_id_range": list(cfg.token_id_range)},
        "model": model,
        "workload": {
            "source": cfg.trace or f"poisson rate={cfg.rate}",
            "time_scale": cfg.time_scale if cfg.trace else None,
            "offered_rate_multiplier": 1.0 / cfg.time_scale if cfg.trace else None,
            "requests": len(workload),
            "span_s": workload[-1].at_s if workload else 0.0,
            "mean_prompt_tokens": sum(r.prompt_tokens for r in workload) / max(1, len(workload)),
            "mean_output_tokens": sum(r.output_tokens for r in workload) / max(1, len(workload)),
            "clipped_to_context": None if clipping is None else asdict(clipping),
        },
        "client": {"host": platform.node(), "python": platform.python_version()},
        "summary": summary,
        "over_time": report.over_time(list(results)),
    }


def write(cfg: BenchConfig, data: dict[str, object]) -> None:
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(json.dumps(data, indent=2) + "\n")
    if cfg.plot:
        from tandem.loadgen.plot import plot_over_time

        plot_over_time(data, cfg.plot)
