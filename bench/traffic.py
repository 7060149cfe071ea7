"""Traffic control under overload: interactive chat next to batch code traffic,
priorities on vs first-come-first-served, in one run.

    .venv/bin/python bench/traffic.py                      # CPU, tiny model (CI-sized)
    python bench/traffic.py --device cuda --shape llama3-8b --dtype bfloat16 --max-model-len 8192 \\
        --max-num-batched-tokens 2048 --requests 600 --capacity-sample 128 \\
        --out bench/results/traffic-llama3-8b-h200.json   # or --model DIR for real weights

The workload comes from the public traces in `--traces` (see their README):
interactive requests are consecutive rows of `azure_conv_2023.csv`, batch
requests consecutive rows of `azure_code_2023.csv` (`--batch-share` of the
requests), both from the wall-clock time where both traces have begun; each
class keeps its trace's own lengths (clipped to the model's context) and
arrival pattern, its time scaled (the factor per class is in the JSON) so that
together they offer `--overload` x the measured capacity over the same span.

Each policy gets a fresh worker (`both`) and router, one after the other:
- priority: router `--traffic-policy priority`, worker `--scheduling-policy
  priority --tpot-slo` (the interactive TPOT SLO), classes interactive:100 with
  the TTFT/TPOT SLOs and batch:10.
- fcfs: router `--traffic-policy fcfs`, worker `--scheduling-policy fcfs`.
Capacity (requests/s) is measured first on the fcfs stack: a sample of the mix
sent at once, completed requests over the makespan. The SLOs are set from the
same stack unloaded: the interactive TTFT SLO is `--slo-factor` x the unloaded
TTFT of an interactive request at the trace's p90 prompt length, the TPOT SLO
that factor x the unloaded TPOT but no less than the median TPOT of the
capacity run (an SLO the pool can meet at capacity); batch requests have no latency SLO (their
goodput counts completions within `--batch-ttft-factor` x the interactive TTFT
SLO). `--ttft-slo`/`--tpot-slo` fix them instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tandem.loadgen.report import Result, percentile, summarize
from tandem.loadgen.trace import TraceRequest, clip, read_trace

CLASSES = ("interactive", "batch")


@dataclass(frozen=True)
class Job:
    cls: str
    req: TraceRequest


# ----- workload (pure) -----------------------------------------------------------------


def mix(
    conv: list[TraceRequest], code: list[TraceRequest], n: int, batch_share: float
) -> list[Job]:
    """`n` requests, `batch_share` of them consecutive code rows and the rest consecutive
    chat rows; each class keeps its own trace's arrival pattern, normalized to span [0, 1]."""
    n_batch = round(n * batch_share)
    jobs: list[Job] = []
    for cls, rows in (("interactive", conv[: n - n_batch]), ("batch", code[:n_batch])):
        if not rows:
            continue
        t0, span = rows[0].at_s, (rows[-1].at_s - rows[0].at_s) or 1.0
        jobs += [
            Job(cls, TraceRequest((r.at_s - t0) / span, r.prompt_tokens, r.output_tokens))
            for r in rows
        ]
    jobs.sort(key=lambda j: j.req.at_s)
    return jobs


def scale(jobs: list[Job], rate: float) -> tuple[list[Job], float]:
    """Stretch the normalized schedule so the mean offered rate is `rate` requests/s;
    returns the schedule and its span in seconds."""
    span = (len(jobs) - 1) / rate
    out = [
        Job(j.cls, TraceRequest(j.req.at_s * span, j.req.prompt_tokens, j.req.output_tokens))
        for j in jobs
    ]
    return out, span


def traces_from(
    directory: Path, max_model_len: int
) -> tuple[list[TraceRequest], list[TraceRequest]]:
    conv = read_trace(directory / "azure_conv_2023.csv")
    code = read_trace(directory / "azure_code_2023.csv")
    # Both files count from their own first row: put them on one clock and start where
    # both have begun (the code trace starts later; earlier chat rows are dropped).
    offset = _first_timestamp(directory / "azure_code_2023.csv") - _first_timestamp(
        directory / "azure_conv_2023.csv"
    )
    conv = [
        TraceRequest(r.at_s - offset, r.prompt_tokens, r.output_tokens)
        for r in conv
        if r.at_s >= offset
    ]
    return clip(conv, max_model_len)[0], clip(code, max_model_len)[0]


def _first_timestamp(path: Path) -> float:
    from datetime import datetime

    with open(path) as f:
        f.readline()
        return datetime.fromisoformat(f.readline().split(",")[0][:26]).timestamp()


# ----- processes -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TANDEM_LOG_LEVEL": "WARNING"}
    with open(log, "wb") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "tandem.cli", *args],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


@contextlib.contextmanager
def stack(
    args: argparse.Namespace, policy: str, classes: str, tpot_slo: float | None
) -> Iterator[str]:
    """A worker and a router for one policy; yields the router's URL."""
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    wport, rport = free_port(), free_port()
    worker_args = [
        "worker",
        "--model",
        args.model,
        "--role",
        "both",
        "--host",
        "127.0.0.1",
        "--port",
        str(wport),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--load-format",
        args.load_format,
        "--max-num-batched-tokens",
        str(args.max_num_batched_tokens),
        "--scheduling-policy",
        policy,
    ]
    if args.num_kv_blocks:
        worker_args += ["--num-kv-blocks", str(args.num_kv_blocks)]
    if tpot_slo is not None and policy == "priority":
        worker_args += ["--tpot-slo", f"{tpot_slo:.6f}"]
    procs = [spawn(worker_args, logs / f"worker-{policy}.log")]
    try:
        _wait_grpc(wport, procs[0])
        procs.append(
            spawn(
                [
                    "router",
                    "--workers",
                    f"127.0.0.1:{wport}",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(rport),
                    "--priority-classes",
                    classes,
                    "--traffic-policy",
                    policy,
                    "--max-queue",
                    str(args.max_queue),
                ],
                logs / f"router-{policy}.log",
            )
        )
        url = f"http://127.0.0.1:{rport}"
        _wait_http(url, procs[1])
        yield url
    finally:
        for p in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def _wait_grpc(port: int, proc: subprocess.Popen[bytes], timeout: float = 600.0) -> None:
    import grpc

    from tandem.rpc.v1 import worker_pb2 as pb
    from tandem.rpc.v1 import worker_pb2_grpc as pb_grpc

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}")
        with contextlib.suppress(grpc.RpcError), grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            if pb_grpc.WorkerServiceStub(ch).Load(pb.LoadRequest(), timeout=2).kv_blocks_total > 0:
                return
        time.sleep(0.5)
    raise TimeoutError("worker not ready")


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"router exited with {proc.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.3)
    raise TimeoutError("router not ready")


# ----- load ----------------------------------------------------------------------------------


async def send(
    session: aiohttp.ClientSession, url: str, job: Job, prompt: list[int], started: float
) -> Result:
    req = job.req
    body = {
        "prompt": prompt,
        "max_tokens": req.output_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "priority": job.cls,
    }
    sent = time.monotonic()
    ttft: float | None = None
    n = 0
    try:
        async with session.post(f"{url}/v1/completions", json=body) as resp:
            if resp.status != 200:
                return Result(
                    sent - started, req.prompt_tokens, 0, None, None, f"HTTP {resp.status}"
                )
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                    continue
                event = json.loads(line[5:])
                if "error" in event:
                    return Result(sent - started, req.prompt_tokens, n, ttft, None, "stream error")
                if event.get("choices") and ttft is None:
                    ttft = time.monotonic() - sent
                if event.get("usage"):
                    n = int(event["usage"]["completion_tokens"])
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Result(sent - started, req.prompt_tokens, n, ttft, None, type(exc).__name__)
    return Result(
        sent - started, req.prompt_tokens, n, ttft, time.monotonic() - sent, None, req.output_tokens
    )


async def replay(url: str, jobs: list[Job], seed: int) -> tuple[list[Result], float]:
    rng = random.Random(seed)
    prompts = [[rng.randrange(10, 1000) for _ in range(j.req.prompt_tokens)] for j in jobs]
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=1800)
    ) as session:
        started = time.monotonic()

        async def one(job: Job, prompt: list[int]) -> Result:
            await asyncio.sleep(max(0.0, started + job.req.at_s - time.monotonic()))
            return await send(session, url, job, prompt, started)

        results = await asyncio.gather(*(one(j, p) for j, p in zip(jobs, prompts, strict=True)))
        return list(results), time.monotonic() - started


async def scrape(url: str) -> dict[str, float]:
    """The router's traffic-control series: shed counts and SLO attainment per class."""
    async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics") as r:
        text = await r.text()
    keep = (
        "tandem_router_shed_total",
        "tandem_router_slo_requests_total",
        "tandem_router_requests_total",
    )
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(keep)
    }


# ----- the run ---------------------------------------------------------------------------------


def per_class(
    jobs: list[Job], results: list[Result], duration: float, slos: dict[str, tuple[float, float]]
) -> dict:
    out = {}
    for cls in CLASSES:
        rs = [r for j, r in zip(jobs, results, strict=True) if j.cls == cls]
        summary = summarize(rs, duration, *slos[cls])
        goodput = summary["goodput"]
        assert isinstance(goodput, dict)
        if goodput["slo_tpot_s"] == float("inf"):
            goodput["slo_tpot_s"] = None  # no TPOT SLO (and JSON has no infinity)
        summary["shed_429"] = sum(1 for r in rs if r.error == "HTTP 429")
        out[cls] = summary
    return out


def calibrate(args: argparse.Namespace, url: str, jobs: list[Job]) -> dict[str, float]:
    """Unloaded latency (for the SLOs) and saturated throughput (the capacity)."""
    conv_prompts = sorted(j.req.prompt_tokens for j in jobs if j.cls == "interactive")
    p90 = int(percentile([float(x) for x in conv_prompts], 90) or 64)
    probe = [Job("interactive", TraceRequest(0.0, p90, 32))]
    alone = [asyncio.run(replay(url, probe, seed=100 + i))[0][0] for i in range(3)]
    ttft = sorted(r.ttft_s or 0.0 for r in alone)[1]
    tpot = sorted(r.tpot_s or 0.0 for r in alone)[1]
    sample = [
        Job(j.cls, TraceRequest(0.0, j.req.prompt_tokens, j.req.output_tokens))
        for j in jobs[: args.capacity_sample]
    ]
    results, makespan = asyncio.run(replay(url, sample, seed=7))
    done = sum(1 for r in results if r.ok)
    saturated_tpot = percentile([t for t in (r.tpot_s for r in results) if t is not None], 50)
    return {
        "unloaded_ttft_s": ttft,
        "unloaded_tpot_s": tpot,
        "saturated_tpot_p50_s": saturated_tpot or 0.0,
        "probe_prompt_tokens": p90,
        "capacity_requests_per_s": done / makespan,
        "capacity_sample": len(sample),
        "capacity_makespan_s": makespan,
    }


def run(args: argparse.Namespace) -> dict:
    conv, code = traces_from(Path(args.traces), args.max_model_len)
    jobs = mix(conv, code, args.requests, args.batch_share)
    base_classes = "interactive:100,batch:10"
    with stack(args, "fcfs", base_classes, None) as url:
        cal = calibrate(args, url, jobs)
    ttft_slo = args.ttft_slo or args.slo_factor * cal["unloaded_ttft_s"]
    # A TPOT SLO the pool can meet at capacity: never below the median TPOT the capacity
    # run itself delivered (on a CPU, the unloaded figure alone is unmeetable under load).
    tpot_slo = args.tpot_slo or max(
        args.slo_factor * cal["unloaded_tpot_s"], cal["saturated_tpot_p50_s"]
    )
    slos = {
        "interactive": (ttft_slo, tpot_slo),
        "batch": (args.batch_ttft_factor * ttft_slo, float("inf")),
    }
    rate = args.overload * cal["capacity_requests_per_s"]
    offered, span = scale(jobs, rate)
    classes = f"interactive:100:{ttft_slo:.6f}:{tpot_slo:.6f},batch:10"
    runs = {}
    for policy in ("priority", "fcfs"):
        with stack(args, policy, classes, tpot_slo) as url:
            results, duration = asyncio.run(replay(url, offered, seed=1))
            runs[policy] = {
                "classes": per_class(offered, results, duration, slos),
                "router_metrics": asyncio.run(scrape(url)),
            }
        print(
            f"{policy}: "
            + ", ".join(
                f"{c} ttft p50 {_fmt(runs[policy]['classes'][c]['ttft_s']['p50'])} p99 "
                f"{_fmt(runs[policy]['classes'][c]['ttft_s']['p99'])} goodput "
                f"{runs[policy]['classes'][c]['goodput']['fraction']:.2f}"
                for c in CLASSES
            ),
            flush=True,
        )
    return {
        "benchmark": "bench/traffic.py",
        "device": args.device,
        "model": args.model,
        "note": "CPU, tiny random-weight model: figures show the mechanism, not production latency"
        if args.device == "cpu"
        else "",
        "host": platform.node(),
        "python": platform.python_version(),
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "plot", "logs")},
        "calibration": cal,
        "slo": {
            "interactive_ttft_s": ttft_slo,
            "interactive_tpot_s": tpot_slo,
            "batch_ttft_s_for_goodput": slos["batch"][0],
        },
        "workload": {
            "sources": ["azure_conv_2023.csv (interactive)", "azure_code_2023.csv (batch)"],
            "requests": len(offered),
            "interactive": sum(1 for j in offered if j.cls == "interactive"),
            "batch": sum(1 for j in offered if j.cls == "batch"),
            "overload": args.overload,
            "offered_requests_per_s": rate,
            "batch_share": args.batch_share,
            "span_s": span,
            "time_scale": {
                cls: span / _trace_span(conv if cls == "interactive" else code, offered, cls)
                for cls in CLASSES
            },
        },
        "runs": runs,
    }


def _trace_span(rows: list[TraceRequest], offered: list[Job], cls: str) -> float:
    """Seconds the replayed rows of one class spanned in the trace itself."""
    n = sum(1 for j in offered if j.cls == cls)
    return (rows[n - 1].at_s - rows[0].at_s) or 1.0 if n else 1.0


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}s"


def plot(data: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    policies = ("priority", "fcfs")
    width = 0.2
    for k, (metric, title) in enumerate((("ttft_s", "TTFT (s)"), ("tpot_s", "TPOT (s)"))):
        ax = axes[k]
        for i, pol in enumerate(policies):
            for q, (stat, hatch) in enumerate((("p50", ""), ("p99", "//"))):
                vals = [data["runs"][pol]["classes"][c][metric][stat] or 0.0 for c in CLASSES]
                xs = [x + (2 * i + q - 1.5) * width for x in range(len(CLASSES))]
                ax.bar(
                    xs,
                    vals,
                    width,
                    label=f"{pol} {stat}",
                    hatch=hatch,
                    color=f"C{i}",
                    alpha=0.6 + 0.4 * q,
                )
        ax.set_xticks(range(len(CLASSES)), CLASSES)
        ax.set_title(title)
        ax.set_yscale("log")
        if metric == "ttft_s":
            ax.axhline(
                data["slo"]["interactive_ttft_s"], color="k", ls=":", label="interactive SLO"
            )
        else:
            ax.axhline(
                data["slo"]["interactive_tpot_s"], color="k", ls=":", label="interactive SLO"
            )
        ax.legend(fontsize=7)
    ax = axes[2]
    for i, pol in enumerate(policies):
        vals = [data["runs"][pol]["classes"][c]["goodput"]["fraction"] for c in CLASSES]
        ax.bar(
            [x + (i - 0.5) * 0.35 for x in range(len(CLASSES))],
            vals,
            0.35,
            label=pol,
            color=f"C{i}",
        )
    ax.set_xticks(range(len(CLASSES)), CLASSES)
    ax.set_title("goodput (fraction of requests within SLO)")
    ax.legend(fontsize=7)
    w = data["workload"]
    fig.suptitle(
        f"{Path(data['model']).name} on {data['device']}: azure conv (interactive) + code (batch) at "
        f"{w['overload']}x capacity ({w['offered_requests_per_s']:.2f} req/s)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default=None, help="model folder (default: the tiny test model)")
    p.add_argument(
        "--shape",
        default=None,
        choices=("llama3-8b",),
        help="instead of --model: that architecture with random weights (implies --load-format dummy)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--load-format", default="safetensors", choices=("safetensors", "dummy"))
    p.add_argument(
        "--traces", default=str(Path(__file__).resolve().parents[2] / "shared" / "traces")
    )
    p.add_argument("--requests", type=int, default=120, help="requests replayed per policy")
    p.add_argument("--overload", type=float, default=1.5, help="offered rate / measured capacity")
    p.add_argument(
        "--batch-share", type=float, default=0.5, help="fraction of the requests that are batch"
    )
    p.add_argument("--capacity-sample", type=int, default=24)
    p.add_argument("--max-model-len", type=int, default=2048, help="lengths are clipped to fit")
    p.add_argument("--max-num-batched-tokens", type=int, default=512)
    p.add_argument("--num-kv-blocks", type=int, default=None)
    p.add_argument("--max-queue", type=int, default=1024)
    p.add_argument("--slo-factor", type=float, default=5.0)
    p.add_argument("--batch-ttft-factor", type=float, default=20.0)
    p.add_argument(
        "--ttft-slo",
        type=float,
        default=None,
        help="interactive TTFT SLO, seconds (default: measured)",
    )
    p.add_argument(
        "--tpot-slo",
        type=float,
        default=None,
        help="interactive TPOT SLO, seconds (default: measured)",
    )
    p.add_argument("--out", default="bench/results/traffic-tiny-cpu.json")
    p.add_argument("--plot", default=None, help="PNG (default: --out with .png)")
    p.add_argument("--logs", default="/tmp/tandem-bench-traffic")
    args = p.parse_args()
    if args.shape is not None:
        from engine import (
            write_model_dir,
        )  # bench/engine.py: the same shapes as the engine benchmark

        args.model, args.load_format = str(write_model_dir(args.shape)), "dummy"
    elif args.model is None:
        from tandem.models.tiny import ensure_tiny_model

        args.model = str(ensure_tiny_model())
    data = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(data, indent=2, default=str) + "\n")
    plot(data, args.plot or str(Path(args.out).with_suffix(".png")))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
