"""The router's own cost: added latency per request and requests per CPU-second.

Setup (all on this machine): a fake worker process that answers the real
WorkerService protocol instantly (no model), a `tandem router` process in front
of it (with the tiny model's tokenizer, so detokenization is included), and
this process as the client.

1. Added latency: the same request (token-id prompt, N output tokens, not
   streamed) sent sequentially to the router over HTTP and straight to the fake
   worker over gRPC; the difference of the percentiles is what the router adds.
2. Throughput per core: closed-loop clients at a fixed concurrency for a fixed
   time; the router process's CPU time (from /proc) gives requests per
   CPU-second, i.e. the most one core can route.

Writes bench/results/router-overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import grpc

from tandem.loadgen.report import percentile
from tandem.rpc.v1 import worker_pb2 as pb
from tandem.rpc.v1 import worker_pb2_grpc as pb_grpc

VOCAB = 1536


class InstantWorker(pb_grpc.WorkerServiceServicer):
    async def Health(self, request, context):
        return pb.HealthResponse(status=pb.HealthResponse.SERVING, role="both")

    async def Info(self, request, context):
        model = pb.ModelInfo(name="tiny-llama", max_model_len=2048, vocab_size=VOCAB, eos_token_ids=[1],
                             block_size=16, num_layers=4, num_kv_heads=2, head_dim=16, kv_dtype="float32")
        return pb.InfoResponse(model=model, role="both", kv_transports=["grpc"], host_id="bench")

    async def Load(self, request, context):
        return pb.LoadResponse(role="both", kv_blocks_total=1000, kv_blocks_free=1000)

    async def Generate(self, request, context):
        n = request.sampling.max_tokens
        prompt = list(request.prompt_token_ids)
        for i in range(n):
            last = i == n - 1
            yield pb.TokenChunk(request_id=request.request_id, token_ids=[300 + (sum(prompt) + i) % 1000],
                                finished=last, finish_reason="length" if last else "",
                                num_prompt_tokens=len(prompt))

    async def Cancel(self, request, context):
        return pb.CancelResponse()


async def _serve_fake(port_file: str) -> None:
    server = grpc.aio.server()
    pb_grpc.add_WorkerServiceServicer_to_server(InstantWorker(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    Path(port_file).write_text(str(port))
    await server.wait_for_termination()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(f"{url}/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"router at {url} did not become healthy")
            await asyncio.sleep(0.2)


async def _latency(url: str, worker: str, n: int, prompt_len: int, out_tokens: int) -> dict[str, object]:
    prompt = [100 + i % 500 for i in range(prompt_len)]
    body = {"prompt": prompt, "max_tokens": out_tokens, "temperature": 0, "ignore_eos": True}
    via_router, direct = [], []
    async with aiohttp.ClientSession() as s:
        for _ in range(20):  # warm-up
            async with s.post(f"{url}/v1/completions", json=body) as r:
                await r.read()
        for _ in range(n):
            t0 = time.perf_counter()
            async with s.post(f"{url}/v1/completions", json=body) as r:
                assert r.status == 200, await r.text()
                await r.read()
            via_router.append(time.perf_counter() - t0)
    async with grpc.aio.insecure_channel(worker) as ch:
        stub = pb_grpc.WorkerServiceStub(ch)
        req = pb.GenerateRequest(request_id="x", prompt_token_ids=prompt,
                                 sampling=pb.SamplingParams(max_tokens=out_tokens, temperature=0))
        for i in range(n + 20):
            t0 = time.perf_counter()
            async for _ in stub.Generate(req, timeout=10):
                pass
            if i >= 20:
                direct.append(time.perf_counter() - t0)
    rp50, rp99 = percentile(via_router, 50), percentile(via_router, 99)
    dp50, dp99 = percentile(direct, 50), percentile(direct, 99)
    assert rp50 is not None and rp99 is not None and dp50 is not None and dp99 is not None
    return {
        "requests": n, "prompt_tokens": prompt_len, "output_tokens": out_tokens,
        "via_router_s": {"p50": rp50, "p99": rp99},
        "direct_worker_grpc_s": {"p50": dp50, "p99": dp99},
        "added_s": {"p50": rp50 - dp50, "p99": rp99 - dp99},
    }


async def _throughput(url: str, router_pid: int, concurrency: int, seconds: float, prompt_len: int,
                      out_tokens: int) -> dict[str, object]:
    prompt = [100 + i % 500 for i in range(prompt_len)]
    body = {"prompt": prompt, "max_tokens": out_tokens, "temperature": 0, "ignore_eos": True}
    done = 0
    failed = 0
    stop_at = time.monotonic() + seconds

    async def client(s: aiohttp.ClientSession) -> None:
        nonlocal done, failed
        while time.monotonic() < stop_at:
            async with s.post(f"{url}/v1/completions", json=body) as r:
                await r.read()
                if r.status == 200:
                    done += 1
                else:
                    failed += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as s:
        cpu0, t0 = _cpu_seconds(router_pid), time.monotonic()
        await asyncio.gather(*(client(s) for _ in range(concurrency)))
        cpu1, t1 = _cpu_seconds(router_pid), time.monotonic()
    cpu = cpu1 - cpu0
    return {
        "concurrency": concurrency, "seconds": t1 - t0, "completed": done, "failed": failed,
        "requests_per_s": done / (t1 - t0), "router_cpu_seconds": cpu,
        "router_cpu_utilization_cores": cpu / (t1 - t0),
        "requests_per_cpu_second": done / cpu if cpu > 0 else None,
        "output_tokens": out_tokens,
    }


async def _main(args: argparse.Namespace) -> dict[str, object]:
    from tandem.models.tiny import (
        ensure_tiny_model,  # the tokenizer folder (imports torch; bench only)
    )

    model_dir = ensure_tiny_model()
    port_file = Path(args.workdir) / "fake-worker.port"
    port_file.unlink(missing_ok=True)
    fake = subprocess.Popen([sys.executable, __file__, "--fake-worker", str(port_file)])
    router = None
    try:
        for _ in range(200):
            if port_file.exists() and port_file.read_text():
                break
            await asyncio.sleep(0.05)
        worker = f"127.0.0.1:{port_file.read_text()}"
        router = subprocess.Popen([sys.executable, "-m", "tandem.cli", "router", "--workers", worker,
                                   "--host", "127.0.0.1", "--port", str(args.port), "--model", str(model_dir),
                                   "--max-inflight-per-worker", "1024"])
        url = f"http://127.0.0.1:{args.port}"
        await _wait_http(url)
        latency = await _latency(url, worker, args.requests, args.prompt_tokens, args.output_tokens)
        throughput = await _throughput(url, router.pid, args.concurrency, args.seconds, args.prompt_tokens,
                                       args.output_tokens)
    finally:
        for p in (router, fake):
            if p is not None:
                p.terminate()
                p.wait(10)
    return {
        "benchmark": "router_overhead",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_1m_at_end": os.getloadavg()[0],
                    "note": "client, router and fake worker share this machine's cores with other work"},
        "latency": latency,
        "throughput": throughput,
    }


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--fake-worker":
        asyncio.run(_serve_fake(sys.argv[2]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--output-tokens", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--port", type=int, default=18431)
    p.add_argument("--workdir", default="/tmp")
    p.add_argument("--out", default="bench/results/router-overhead.json")
    args = p.parse_args()
    data = asyncio.run(_main(args))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(data, indent=2) + "\n")
    lat, thr = data["latency"], data["throughput"]
    print(f"added latency p50 {lat['added_s']['p50'] * 1e3:.2f} ms  p99 {lat['added_s']['p99'] * 1e3:.2f} ms")  # type: ignore[index]
    print(f"throughput {thr['requests_per_s']:.0f} req/s using {thr['router_cpu_utilization_cores']:.2f} cores "  # type: ignore[index]
          f"-> {thr['requests_per_cpu_second']:.0f} req per router CPU-second")  # type: ignore[index]
    return 0


if __name__ == "__main__":
    sys.exit(main())
