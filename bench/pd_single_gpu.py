"""Prefill/decode disaggregation on one GPU: two `tandem worker` processes.

    python bench/pd_single_gpu.py                 # on a GPU: tiny model + Llama-3-8B shape
    python bench/pd_single_gpu.py --device cpu    # orchestration check: tiny model, shm/grpc

Measured in one run, every figure against a baseline taken in the same run:

(a) correctness: greedy tokens of prompts through a prefill worker and a decode
    worker (Reserve -> Prefill -> Decode over real gRPC) for every KV transport,
    against a colocated `both` worker (tiny model, float32);
(b) transfer bandwidth of a 4096-token prompt's KV (Llama-3-8B shape: 32 layers
    x 8 KV heads x 128 dim, bf16, K+V = 512 MiB) shipped by the real KVSender
    from this process into the decode worker's reserved blocks, per transport,
    against the device-to-device copy bandwidth; for cuda_ipc also the copies
    alone (device time of the transport's data path, no control messages);
(c) layer-wise overlap: time to first token of that prompt on the prefill
    worker (random bf16 weights), split into prefill compute and the extra wait
    for the transfer after compute ends, per transport, against a prefill that
    ships nothing and the transfer time measured in (b).

Prints a table; writes JSON to $OUT/pd_single_gpu.json when $OUT is set, else
bench/results/pd_single_gpu-<device>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tandem.rpc.v1 import worker_pb2, worker_pb2_grpc  # noqa: E402


def _llama3_8b_config() -> dict[str, Any]:
    """The Llama-3-8B shape of bench/engine.py (one source for both benchmarks)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_engine", ROOT / "bench" / "engine.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.SHAPES["llama3-8b"])


# ----- worker processes --------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Worker:
    def __init__(self, model: Path, role: str, device: str, dtype: str, transports: list[str],
                 num_kv_blocks: int, load_format: str, log_dir: Path) -> None:  # fmt: skip
        self.role = role
        self.address = f"127.0.0.1:{_free_port()}"
        cmd = [
            sys.executable, "-m", "tandem.cli", "worker", "--model", str(model), "--role", role,
            "--port", self.address.rsplit(":", 1)[1], "--device", device, "--dtype", dtype,
            "--num-kv-blocks", str(num_kv_blocks), "--kv-transports", ",".join(transports),
            "--load-format", load_format,
        ]  # fmt: skip
        self.log = open(log_dir / f"worker-{role}-{self.address.rsplit(':', 1)[1]}.log", "wb")  # noqa: SIM115
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
            "PYTHONUNBUFFERED": "1",
        }
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.channel = grpc.aio.insecure_channel(
            self.address,
            options=[
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20),
            ],
        )
        self.stub = worker_pb2_grpc.WorkerServiceStub(self.channel)

    async def ready(self, timeout_s: float = 300) -> worker_pb2.InfoResponse:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.role} worker exited ({self.proc.returncode}); log {self.log.name}"
                )
            try:
                return await self.stub.Info(worker_pb2.InfoRequest(), timeout=2)
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.5)
        raise RuntimeError(f"{self.role} worker did not start in {timeout_s}s")

    async def stop(self) -> None:
        await self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


async def _start(specs: list[dict[str, Any]]) -> list[Worker]:
    workers = [Worker(**s) for s in specs]
    try:
        await asyncio.gather(*(w.ready() for w in workers))
    except BaseException:
        await asyncio.gather(*(w.stop() for w in workers))
        raise
    return workers


# ----- one request, disaggregated --------------------------------------------------
def _greedy(n: int) -> worker_pb2.SamplingParams:
    return worker_pb2.SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


async def _reserve(
    d: Worker, rid: str, prompt: list[int], transport: str, new: int
) -> worker_pb2.KVTarget:
    res = await d.stub.Reserve(
        worker_pb2.ReserveRequest(request_id=rid, prompt_token_ids=prompt, sampling=_greedy(new)),
        timeout=30,
    )
    return worker_pb2.KVTarget(
        address=d.address, request_id=rid, block_ids=res.block_ids, skip_blocks=res.skip_blocks,
        transport=transport, accepted_transports=res.kv_transports, host_id=res.host_id,
    )  # fmt: skip


async def _pd(
    p: Worker, d: Worker, rid: str, prompt: list[int], transport: str, new: int
) -> dict[str, Any]:
    target = await _reserve(d, rid, prompt, transport, new)
    t0 = time.perf_counter()
    pre = await p.stub.Prefill(
        worker_pb2.PrefillRequest(
            request_id=rid, prompt_token_ids=prompt, sampling=_greedy(new), target=target
        ),
        timeout=120,
    )
    ttft = time.perf_counter() - t0
    tokens = list(pre.output.token_ids)
    if new > 1:
        async for c in d.stub.Decode(
            worker_pb2.DecodeRequest(request_id=rid, first_token_id=tokens[0]), timeout=120
        ):
            tokens.extend(c.token_ids)
    else:
        await d.stub.Cancel(worker_pb2.CancelRequest(request_id=rid), timeout=10)
    return {
        "tokens": tokens, "ttft_s": ttft, "compute_s": pre.compute_seconds,
        "transfer_wait_s": pre.transfer_wait_seconds, "kv_bytes": pre.kv_bytes, "transport": pre.transport,
        "cached_tokens": pre.output.num_cached_tokens,
    }  # fmt: skip


async def _colocated(both: Worker, rid: str, prompt: list[int], new: int) -> list[int]:
    req = worker_pb2.GenerateRequest(request_id=rid, prompt_token_ids=prompt, sampling=_greedy(new))
    return [t async for c in both.stub.Generate(req, timeout=120) for t in c.token_ids]


def _prompt(seed: int, n: int, vocab: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n,), generator=g).tolist()


# ----- (a) correctness -------------------------------------------------------------
async def correctness(device: str, transports: list[str], log_dir: Path) -> dict[str, Any]:
    from tandem.models.tiny import write_tiny_model

    model = write_tiny_model(Path(tempfile.mkdtemp(prefix="tandem-pd-tiny-")) / "tiny", seed=0)
    common = {"model": model, "device": device, "dtype": "float32", "transports": transports,
              "num_kv_blocks": 256, "load_format": "safetensors", "log_dir": log_dir}  # fmt: skip
    both, p, d = await _start([{**common, "role": r} for r in ("both", "prefill", "decode")])
    rows = []
    try:
        vocab = (await both.ready()).model.vocab_size
        for i, n in enumerate((5, 16, 37, 300, 1000)):
            prompt = _prompt(i, n, vocab)
            want = await _colocated(both, f"both-{i}", prompt, 16)
            for t in transports:
                got = await _pd(p, d, f"pd-{t}-{i}", prompt, t, 16)
                rows.append({"prompt_tokens": n, "transport": got["transport"], "requested": t,
                             "identical": got["tokens"] == want, "kv_bytes": got["kv_bytes"]})  # fmt: skip
        used = [
            (await w.stub.Load(worker_pb2.LoadRequest(), timeout=5)).kv_blocks_used for w in (p, d)
        ]
    finally:
        await asyncio.gather(*(w.stop() for w in (both, p, d)))
    return {
        "all_identical": all(r["identical"] for r in rows),
        "rows": rows,
        "blocks_used_after": used,
    }


# ----- (b) transfer bandwidth --------------------------------------------------------
def _chunks(layout: Any, num_blocks: int, per_step_blocks: int, device: torch.device) -> list[Any]:
    from tandem.worker.outputs import KVChunk

    out = []
    for start in range(0, num_blocks, per_step_blocks):
        n = min(per_step_blocks, num_blocks - start)
        for layer in range(layout.num_layers):
            k = torch.randn(n, *layout.block_shape, device=device).to(layout.torch_dtype())
            out.append(KVChunk("bench", layer, start, k, torch.randn_like(k)))
    return out


async def _ship(
    d: Worker, layout: Any, chunks: list[Any], prompt: list[int], transport: str, reps: int
) -> list[float]:
    from tandem.worker.kv_transfer import TransferTarget, load_transport
    from tandem.worker.kv_transfer_peers import PeerChannels
    from tandem.worker.kv_transfer_sender import KVSender

    peers = PeerChannels()
    times = []
    try:
        for r in range(reps + 1):  # the first one warms up (and maps the peer's pool)
            pb = await _reserve(d, f"ship-{transport}-{r}", prompt, transport, 1)
            target = TransferTarget(
                d.address, pb.request_id, tuple(pb.block_ids), pb.skip_blocks, transport
            )
            t0 = time.perf_counter()
            sender = KVSender(
                load_transport(transport), target, layout, peers.push_kv(d.address, 4)
            )
            feeder = threading.Thread(target=lambda s=sender: [s.submit(c) for c in chunks])
            feeder.start()
            await asyncio.to_thread(feeder.join)
            await sender.finish()
            times.append(time.perf_counter() - t0)
            await d.stub.Cancel(worker_pb2.CancelRequest(request_id=pb.request_id), timeout=10)
    finally:
        await peers.close()
    return times[1:]


async def _ipc_copy_seconds(
    d: Worker, layout: Any, chunks: list[Any], prompt: list[int], reps: int
) -> float:
    """Device time of cuda_ipc's data path alone: every chunk copied into the peer's
    reserved blocks on the transport's stream, timed with CUDA events."""
    from tandem.worker.kv_transport_cuda_ipc import TRANSPORT, block_runs

    pb = await _reserve(d, "copy-only", prompt, "cuda_ipc", 1)
    peer = await asyncio.to_thread(TRANSPORT.peer, d.address, layout)
    ids = list(pb.block_ids)
    torch.cuda.synchronize()  # the chunks are complete before the side stream reads them
    times = []
    for _ in range(reps + 1):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        stream = TRANSPORT._stream(chunks[0].k.device)
        start.record(stream)
        with torch.cuda.stream(stream):
            for c in chunks:
                dst = ids[c.first_block : c.first_block + c.k.shape[0]]
                for src, first, n in block_runs(dst):
                    peer.k[c.layer][first : first + n].copy_(c.k[src : src + n], non_blocking=True)
                    peer.v[c.layer][first : first + n].copy_(c.v[src : src + n], non_blocking=True)
        end.record(stream)
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    await d.stub.Cancel(worker_pb2.CancelRequest(request_id="copy-only"), timeout=10)
    return statistics.median(times[1:])


def copy_bandwidth(device: torch.device) -> float:
    """Device-to-device copy, bytes read plus written per second (1 GiB buffers)."""
    n = 1 << 30
    src = torch.randn(n // 2, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n / statistics.median(times)


# ----- (b) + (c) on the big shape ----------------------------------------------------
async def disaggregation(args: argparse.Namespace, device: str, transports: list[str], log_dir: Path,
                         copy_rw: float | None, out: dict[str, Any], save: Callable[[], None]) -> None:  # fmt: skip
    on_gpu = device == "cuda"
    model_dir = Path(tempfile.mkdtemp(prefix="tandem-pd-big-"))
    if on_gpu:
        (model_dir / "config.json").write_text(json.dumps(_llama3_8b_config()))
        common = {
            "model": model_dir,
            "dtype": "bfloat16",
            "load_format": "dummy",
            "num_kv_blocks": 1024,
        }
    else:
        from tandem.models.tiny import write_tiny_model

        model_dir = write_tiny_model(model_dir / "tiny", seed=0)
        common = {
            "model": model_dir,
            "dtype": "float32",
            "load_format": "safetensors",
            "num_kv_blocks": 512,
        }
    # One after the other: loading stages weights in float32, and two such peaks at
    # once would not fit one GPU next to each other.
    specs = [{**common, "role": r, "device": device, "transports": transports, "log_dir": log_dir}
             for r in ("prefill", "decode")]  # fmt: skip
    (p,) = await _start(specs[:1])
    try:
        (d,) = await _start(specs[1:])
    except BaseException:
        await p.stop()
        raise
    out.update(bandwidth=[], overlap=[])
    try:
        info = await d.ready()
        layout = _layout(info)
        tokens = min(args.tokens, info.model.max_model_len - 8)
        prompt = _prompt(7, tokens, info.model.vocab_size)
        num_blocks = -(-tokens // layout.block_size)
        total = 2 * layout.num_layers * num_blocks * layout.block_bytes
        out.update(model=info.model.name, prompt_tokens=tokens, kv_bytes=total,
                   layout={"layers": layout.num_layers, "kv_heads": layout.num_kv_heads,
                           "head_dim": layout.head_dim, "dtype": layout.dtype})  # fmt: skip
        dev = torch.device("cuda" if on_gpu else "cpu")
        chunks = _chunks(layout, num_blocks, 2048 // layout.block_size, dev)
        one_way = copy_rw / 2 if copy_rw else None
        ship_s: dict[str, float] = {}
        if "cuda_ipc" in transports:
            s = await _ipc_copy_seconds(d, layout, chunks, prompt, args.reps)
            out["bandwidth"].append(_bw_row("cuda_ipc (copies only)", total, s, one_way))
        for t in transports:
            times = await _ship(
                d, layout, chunks, prompt, t, args.reps if t != "grpc" else max(1, args.reps // 2)
            )
            ship_s[t] = statistics.median(times)
            out["bandwidth"].append(_bw_row(t, total, ship_s[t], one_way))
            save()
        del chunks
        vocab = info.model.vocab_size
        out["overlap"] = await _overlap(p, d, tokens, vocab, transports, ship_s, args.reps)
        save()
    finally:
        await asyncio.gather(p.stop(), d.stop())


def _layout(info: worker_pb2.InfoResponse) -> Any:
    from tandem.worker.kv_transfer import KVLayout

    m = info.model
    return KVLayout(m.num_layers, m.block_size, m.num_kv_heads, m.head_dim, m.kv_dtype)


def _bw_row(name: str, total: int, seconds: float, one_way_copy: float | None) -> dict[str, Any]:
    row = {"transport": name, "bytes": total, "seconds": seconds, "gb_per_s": total / seconds / 1e9}
    if one_way_copy:
        row["vs_copy"] = total / seconds / one_way_copy
    return row


async def _overlap(p: Worker, d: Worker, tokens: int, vocab: int, transports: list[str],
                   ship_s: dict[str, float], reps: int) -> list[dict[str, Any]]:  # fmt: skip
    """TTFT per transport. Every run has a prompt of its own: a repeated prompt would
    hit the prefill worker's prefix cache and leave almost nothing to compute."""
    rows = []
    # Prefill alone (KV dropped): the compute baseline; the first run warms up.
    base = []
    for r in range(reps + 1):
        prompt = _prompt(1000 + r, tokens, vocab)
        t0 = time.perf_counter()
        pre = await p.stub.Prefill(
            worker_pb2.PrefillRequest(
                request_id=f"alone-{r}", prompt_token_ids=prompt, sampling=_greedy(1)
            ),
            timeout=120,
        )
        base.append({"ttft_s": time.perf_counter() - t0, "compute_s": pre.compute_seconds,
                     "transfer_wait_s": 0.0, "cached_tokens": pre.output.num_cached_tokens})  # fmt: skip
    baseline = _overlap_row("none (KV dropped)", base[1:], None, None)
    rows.append(baseline)
    for i, t in enumerate(transports):
        runs = [await _pd(p, d, f"ov-{t}-{r}", _prompt(2000 + 100 * i + r, tokens, vocab), t, 1)
                for r in range(reps + 1)]  # fmt: skip
        assert all(x["transport"] == t for x in runs), [x["transport"] for x in runs]
        rows.append(_overlap_row(t, runs[1:], ship_s.get(t), baseline["ttft_s"]))
    return rows


def _overlap_row(name: str, runs: list[dict[str, Any]], ship_s: float | None,
                 base_ttft: float | None) -> dict[str, Any]:  # fmt: skip
    keys = ("ttft_s", "compute_s", "transfer_wait_s")
    row: dict[str, Any] = {
        "transport": name,
        **{k: statistics.median(r[k] for r in runs) for k in keys},
    }
    row.update(runs=len(runs), cached_tokens=max(r["cached_tokens"] for r in runs))
    if ship_s is not None and base_ttft is not None:
        row["transfer_alone_s"] = ship_s
        # What shipping added to the time to first token, and the share of a
        # stand-alone transfer that the overlap with compute hid. The wait after
        # compute alone would overstate it: the sender's work also slows compute.
        row["ttft_overhead_s"] = row["ttft_s"] - base_ttft
        row["hidden_fraction"] = min(1.0, max(0.0, 1 - row["ttft_overhead_s"] / ship_s))
    return row


# ----- report ------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("grpcio", "protobuf", "triton", "tandem-serve"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
    return out


def print_table(r: dict[str, Any]) -> None:
    print(
        f"\ndevice: {r['device']}  copy (read+write): {r.get('copy_bytes_per_s', 0) / 1e12:.2f} TB/s"
    )
    c = r["correctness"]
    print(f"(a) greedy tokens P->D == colocated: {c['all_identical']} "
          f"({sum(x['identical'] for x in c['rows'])}/{len(c['rows'])} prompt x transport)")  # fmt: skip
    big = r.get("disaggregation")
    if not big:
        return
    print(f"(b) {big['prompt_tokens']}-token prompt, KV {big['kv_bytes'] / 2**20:.0f} MiB")
    print(f"    {'transport':<24}{'seconds':>10}{'GB/s':>10}{'vs copy':>9}")
    for b in big["bandwidth"]:
        vs = f"{b['vs_copy']:.0%}" if "vs_copy" in b else "-"
        print(f"    {b['transport']:<24}{b['seconds']:>10.4f}{b['gb_per_s']:>10.1f}{vs:>9}")
    print("(c) time to first token, medians (s)")
    print(
        f"    {'transport':<20}{'TTFT':>9}{'compute':>9}{'wait':>9}{'added':>9}{'alone':>9}{'hidden':>8}"
    )
    for o in big["overlap"]:
        alone = f"{o['transfer_alone_s']:.4f}" if "transfer_alone_s" in o else "-"
        hidden = f"{o['hidden_fraction']:.0%}" if "hidden_fraction" in o else "-"
        added = f"{o['ttft_overhead_s']:.4f}" if "ttft_overhead_s" in o else "-"
        print(f"    {o['transport']:<20}{o['ttft_s']:>9.4f}{o['compute_s']:>9.4f}"
              f"{o['transfer_wait_s']:>9.4f}{added:>9}{alone:>9}{hidden:>8}")  # fmt: skip


async def amain(args: argparse.Namespace, r: dict[str, Any], save: Callable[[], None]) -> None:
    """Fill `r` phase by phase, saving after each (a cut-off run keeps what it measured)."""
    device = (
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    transports = ["cuda_ipc", "shm", "grpc"] if device == "cuda" else ["shm", "grpc"]
    log_dir = Path(tempfile.mkdtemp(prefix="tandem-pd-logs-"))
    r.update(transports=transports, reps=args.reps)
    copy_rw = copy_bandwidth(torch.device("cuda")) if device == "cuda" else None
    if copy_rw:
        r["copy_bytes_per_s"] = copy_rw
    try:
        r["correctness"] = await correctness(device, transports, log_dir)
        print(f"correctness: {r['correctness']['all_identical']}", flush=True)
        save()
        if not args.skip_big:
            r["disaggregation"] = {}
            await disaggregation(
                args, device, transports, log_dir, copy_rw, r["disaggregation"], save
            )
    except BaseException:
        for log in sorted(log_dir.iterdir()):  # the workers' side of the story
            tail = log.read_text(errors="replace").splitlines()[-25:]
            print(f"----- {log.name}", *tail, sep="\n", file=sys.stderr)
        raise


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=4096, help="prompt length for (b) and (c)")
    ap.add_argument("--skip-big", action="store_true", help="only (a)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    on_gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    name = torch.cuda.get_device_name() if on_gpu else (platform.processor() or "cpu")
    tag = name.split()[1].lower() if on_gpu and len(name.split()) > 1 else "cpu"
    r: dict[str, Any] = {"device": name, "versions": _versions()}
    if args.out:
        path = Path(args.out)
    elif os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / "pd_single_gpu.json"
    else:
        path = ROOT / "bench" / "results" / f"pd_single_gpu-{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        path.write_text(json.dumps(r, indent=2) + "\n")

    asyncio.run(amain(args, r, save))
    save()
    print_table(r)
    print(f"wrote {path}")
    return 0 if r["correctness"]["all_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
