"""Where a decode step's time goes: the engine's phases, timed on the device.

    python bench/profile_decode.py --shape llama3-8b      # on a GPU
    python bench/profile_decode.py --shape tiny --device cpu

For batch 1 and 64 at context ~1k (Llama-3-8B shape, bf16, random weights, CUDA graphs
as the engine runs them) it times, over many decode steps, each phase of
`Engine.step`: scheduling (host), input preparation and the graph replay (host time
to launch, device time by CUDA events), the logits GEMM, sampling (which ends in the
step's one host synchronization), and the rest (update, stop checks, outputs). Beside
it: the step's floor (weights + KV bytes over the measured copy bandwidth). A torch
profiler trace of a few steps gives the top kernels. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tandem.worker.model_runner as model_runner_module
from bench.engine import SHAPES, ceilings, param_counts, write_model_dir
from tandem.sampling import SamplingParams
from tandem.worker.config import EngineConfig
from tandem.worker.engine import Engine


class Phases:
    """Host wall time per phase (perf_counter) and device time per phase (CUDA events)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.host: dict[str, list[float]] = defaultdict(list)
        self.pending: list[tuple[str, Any, Any]] = []

    def wrap(self, name: str, fn: Callable[..., Any], events: bool = False) -> Callable[..., Any]:
        def timed(*a: Any, **k: Any) -> Any:
            start_ev = end_ev = None
            if events and self.device.type == "cuda":
                start_ev, end_ev = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                start_ev.record()
            t = time.perf_counter()
            out = fn(*a, **k)
            self.host[name].append(time.perf_counter() - t)
            if end_ev is not None:
                end_ev.record()
                self.pending.append((name, start_ev, end_ev))
            return out

        return timed

    def device_times(self) -> dict[str, list[float]]:
        torch.cuda.synchronize()
        out: dict[str, list[float]] = defaultdict(list)
        for name, a, b in self.pending:
            out[name].append(a.elapsed_time(b) / 1e3)
        return out


def med_ms(values: list[float]) -> float | None:
    return statistics.median(values) * 1e3 if values else None


def profile(
    engine: Engine, batch: int, context: int, steps: int, vocab: int, device: torch.device
) -> dict[str, Any]:
    g = torch.Generator().manual_seed(batch)
    params = SamplingParams(max_tokens=steps + 40, temperature=0.0, ignore_eos=True)
    for i in range(batch):
        engine.add_request(
            f"b{batch}-{i}", torch.randint(3, vocab, (context,), generator=g).tolist(), params
        )
    while (
        any(r.num_computed_tokens < r.num_prompt_tokens for r in engine.scheduler.running)
        or engine.scheduler.waiting
    ):
        engine.step()
    for _ in range(10):  # warm: graphs captured, caches hot
        engine.step()
    phases = Phases(device)
    runner = engine.runner
    saved = (
        engine.scheduler.schedule,
        runner._run_graph,
        runner.model.compute_logits,
        model_runner_module.sample,
    )
    engine.scheduler.schedule = phases.wrap("schedule", saved[0])  # type: ignore[method-assign]
    runner._run_graph = phases.wrap("prepare+replay", saved[1], events=True)  # type: ignore[method-assign]
    runner.model.compute_logits = phases.wrap("logits", saved[2], events=True)  # type: ignore[method-assign]
    model_runner_module.sample = phases.wrap("sample+sync", saved[3])  # type: ignore[assignment]
    walls = []
    try:
        for _ in range(steps):
            t = time.perf_counter()
            engine.step()
            walls.append(time.perf_counter() - t)
    finally:
        engine.scheduler.schedule, runner._run_graph, runner.model.compute_logits = saved[:3]  # type: ignore[method-assign]
        model_runner_module.sample = saved[3]  # type: ignore[assignment]
    dev = phases.device_times() if device.type == "cuda" else {}
    top: list[dict[str, Any]] = []
    if device.type == "cuda":
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                engine.step()
        for ev in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:15]:
            top.append({"name": ev.key[:120], "device_ms_per_step": ev.device_time_total / 5 / 1e3,
                        "calls_per_step": ev.count / 5})  # fmt: skip
    for r in list(engine.scheduler.running):
        engine.abort(r.request_id)
    known = sum(med_ms(phases.host[p]) or 0.0 for p in phases.host)
    wall = med_ms(walls) or 0.0
    return {
        "batch": batch,
        "context": context,
        "step_ms": wall,
        "host_ms": {p: med_ms(v) for p, v in phases.host.items()},
        "device_ms": {p: med_ms(v) for p, v in dev.items()},
        "rest_of_step_ms": wall - known,
        "top_kernels": top,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    cfg = SHAPES[args.shape]
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    folder = write_model_dir(args.shape)
    ceil = ceilings(device)
    engine = Engine(EngineConfig(str(folder), device=args.device, dtype=dtype, load_format="dummy",
                                 num_kv_blocks=(64 * (args.context + args.steps + 64)) // 16 + 64,
                                 max_num_batched_tokens=8192, cuda_graph_max_batch=64))  # fmt: skip
    counts = param_counts(cfg)
    elem = 2 if dtype == "bfloat16" else 4
    kv_per_token = (
        2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * cfg["head_dim"] * elem
    )
    rows = []
    for batch in (1, 64):
        row = profile(engine, batch, args.context, args.steps, cfg["vocab_size"], device)
        if ceil:
            # The embedding table is gathered, not read: weights = body + lm_head (as bench/engine.py).
            weights = (counts["body"] + counts["lm_head"]) * elem
            floor_bytes = weights + batch * (args.context + 10 + args.steps / 2) * kv_per_token
            row["floor_ms"] = floor_bytes / ceil["copy_bytes_per_s"] * 1e3
            row["of_floor"] = row["floor_ms"] / row["step_ms"]
        rows.append(row)
    result = {
        "benchmark": "profile_decode",
        "shape": args.shape,
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "ceilings": ceil,
        "rows": rows,
    }
    for r in rows:
        print(f"batch {r['batch']:>3}: step {r['step_ms']:.3f} ms"
              + (f", floor {r['floor_ms']:.3f} ms ({100 * r['of_floor']:.0f}%)" if "floor_ms" in r else ""))  # fmt: skip
        for p, v in r["host_ms"].items():
            d = r["device_ms"].get(p)
            print(f"   {p:<16} host {v:.3f} ms" + (f", device {d:.3f} ms" if d is not None else ""))
        print(f"   {'rest of step':<16} host {r['rest_of_step_ms']:.3f} ms")
        for k in r["top_kernels"][:8]:
            print(
                f"      {k['device_ms_per_step']:.3f} ms  x{k['calls_per_step']:.0f}  {k['name'][:80]}"
            )
    out = args.out or Path(__file__).parent / "results" / f"profile_decode-{args.shape}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
