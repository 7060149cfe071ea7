"""Redistribution on a shifting mix: colocated vs every static split vs `--autoscale`.

    .venv/bin/python bench/redistribution.py --device cpu --workers 3 --rate-scale 1.0 \\
        --out bench/results/redistribution-tiny-cpu

One invocation runs every policy as a real `tandem serve` on the same trace, the
same N and the same SLOs, one after the other:

- colocated: N `both` workers (`--prefill 0 --decode N`);
- static: every split P:D with P + D = N (P, D >= 1); the best is reported;
- adaptive: `--autoscale --workers N` (starting from the even split).

Each run replays the trace (default tests/data/shifting-trace.csv, built by
bench/shifting_trace.py: prompt-heavy, then output-heavy) with arrival offsets
divided by `--rate-scale`, while a sampler reads every worker's /metrics once a
second (role, busy seconds, tokens). Reported per policy: goodput (requests
meeting both the TTFT and the TPOT SLO, per second per worker), SLO attainment,
mean busy fraction per role (busy seconds over the seconds a worker spent in that
role, from `tandem_worker_busy_seconds_total`), the flips, and, beside the
measured adaptive/best-static ratio, the fluid bound of
../shared/design/REDISTRIBUTION.md computed from the trace's two phases and the
per-role costs measured in these runs (busy seconds per prompt token on prefill
workers, per output token on decode workers).

With `--bisect K`, each policy then runs K more times at other rate scales
(doubling, halving, then bisecting) to find REDISTRIBUTION.md's headline figure:
the largest rate scale it sustains with >= 90% of requests meeting both SLOs,
reported per policy and as adaptive / best static / colocated ratios.

Writes OUT.json (device, versions, every figure, the command) and OUT.png
(goodput per policy; adaptive's role counts over time).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import re
import selectors
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tandem.loadgen.bench import BenchConfig, run  # noqa: E402
from tandem.loadgen.trace import TraceRequest, read_trace  # noqa: E402
from tandem.planner.scrape import parse  # noqa: E402

STARTED = re.compile(r"started (\S+) \(pid \d+\): tandem worker .* --metrics-port (\d+)")
ROLES = ("prefill", "decode", "both")
#: Knobs of the adaptive run (the CPU end-to-end test's): short windows for a short trace.
AUTOSCALE_ARGS = (
    "--scale-interval 2 --scale-up-window 4 --scale-down-window 6 --cooldown 6 "
    "--target-busy 0.15 --target-kv-usage 0.2"
)


@dataclass(frozen=True)
class Policy:
    name: str  # "colocated", "static 2:1", "adaptive"
    serve_args: tuple[str, ...]


@dataclass(frozen=True)
class Sample:
    at: float
    role: dict[str, str]  # worker -> role
    busy: dict[str, float]  # worker -> busy seconds (counter)
    prefill_tokens: dict[str, float]
    decode_tokens: dict[str, float]


# ----- pure parts ---------------------------------------------------------------------
def policies(n: int, autoscale_args: Sequence[str]) -> list[Policy]:
    if n < 2:
        raise ValueError(f"--workers: need at least 2, got {n}")
    out = [Policy("colocated", ("--prefill", "0", "--decode", str(n)))]
    for p in range(1, n):
        out.append(Policy(f"static {p}:{n - p}", ("--prefill", str(p), "--decode", str(n - p))))
    out.append(Policy("adaptive", ("--autoscale", "--workers", str(n), *autoscale_args)))
    return out


@dataclass
class RoleTally:
    busy_s: float = 0.0
    worker_s: float = 0.0  # seconds workers spent in this role
    prefill_tokens: float = 0.0
    decode_tokens: float = 0.0


def tally(samples: Sequence[Sample]) -> dict[str, RoleTally]:
    """Busy seconds and tokens per role; an interval counts for the role its worker
    had at the interval's end (a flip is at most one sampling interval off)."""
    out = {r: RoleTally() for r in ROLES}
    for a, b in itertools.pairwise(samples):
        for w, role in b.role.items():
            if w not in a.busy:
                continue
            t = out[role]
            t.worker_s += b.at - a.at
            t.busy_s += max(0.0, b.busy[w] - a.busy[w])
            t.prefill_tokens += max(0.0, b.prefill_tokens[w] - a.prefill_tokens[w])
            t.decode_tokens += max(0.0, b.decode_tokens[w] - a.decode_tokens[w])
    return out


def flips(samples: Sequence[Sample]) -> int:
    return sum(
        1
        for a, b in itertools.pairwise(samples)
        for w, role in b.role.items()
        if w in a.role and a.role[w] != role
    )


def role_counts(samples: Sequence[Sample], t0: float) -> list[dict[str, float]]:
    return [
        {"t_s": s.at - t0, **{r: float(sum(v == r for v in s.role.values())) for r in ROLES}}
        for s in samples
    ]


@dataclass(frozen=True)
class Phase:
    prompt_tokens_per_s: float
    output_tokens_per_s: float
    requests: int


def phases(trace: Sequence[TraceRequest], phase_s: float) -> tuple[Phase, Phase]:
    """The trace's two phases (split at phase_s, in replayed seconds)."""
    end = max(r.at_s for r in trace) + 1e-9
    out = []
    for lo, hi in ((0.0, phase_s), (phase_s, end)):
        got = [r for r in trace if lo <= r.at_s < hi]
        span = max(hi - lo, 1e-9)
        out.append(
            Phase(
                sum(r.prompt_tokens for r in got) / span,
                sum(r.output_tokens for r in got) / span,
                len(got),
            )
        )
    return out[0], out[1]


def fluid_bound(a: Phase, b: Phase, cost_prefill: float, cost_decode: float) -> dict[str, float]:
    """REDISTRIBUTION.md's fluid model: GPU-seconds per second of each role in each phase;
    an ideal adaptive pool vs the best static split, as sustainable-rate multiples per GPU."""
    ap, ad = a.prompt_tokens_per_s * cost_prefill, a.output_tokens_per_s * cost_decode
    bp, bd = b.prompt_tokens_per_s * cost_prefill, b.output_tokens_per_s * cost_decode
    adaptive = 1.0 / max(ap + ad, bp + bd)
    static = 1.0 / (max(ap, bp) + max(ad, bd))
    return {
        "a_prefill_gpu_s_per_s": ap,
        "a_decode_gpu_s_per_s": ad,
        "b_prefill_gpu_s_per_s": bp,
        "b_decode_gpu_s_per_s": bd,
        "adaptive_rate_per_gpu": adaptive,
        "static_rate_per_gpu": static,
        "adaptive_over_static": adaptive / static,
    }


def costs(runs: Sequence[dict[str, object]]) -> dict[str, float]:
    """Busy seconds per prompt token on prefill workers and per output token on decode
    workers, pooled over the static runs (the decode figure includes the short prompts
    decode workers prefill themselves)."""
    p = d = pt = dt = 0.0
    for r in runs:
        roles = r["roles"]
        assert isinstance(roles, dict)
        p += roles["prefill"]["busy_s"]
        pt += roles["prefill"]["prefill_tokens"]
        d += roles["decode"]["busy_s"]
        dt += roles["decode"]["decode_tokens"]
    if pt <= 0 or dt <= 0:
        raise ValueError("no prefill or decode tokens measured: cannot cost the roles")
    return {"prefill_s_per_token": p / pt, "decode_s_per_token": d / dt}


def summarize(
    policy: Policy, report: dict, samples: Sequence[Sample], n: int, t0: float
) -> dict[str, object]:
    s = report["summary"]
    duration = float(s["duration_s"])
    roles = tally(samples)
    return {
        "policy": policy.name,
        "serve_args": list(policy.serve_args),
        "requests": s["requests"],
        "failed": s["failed"],
        "duration_s": duration,
        "goodput_per_s_per_worker": s["goodput"]["requests_meeting_slo"] / duration / n,
        "slo_attainment": s["goodput"]["fraction"],
        "ttft_s": s["ttft_s"],
        "tpot_s": s["tpot_s"],
        "busy_fraction": {
            r: (t.busy_s / t.worker_s if t.worker_s else None) for r, t in roles.items()
        },
        "roles": {r: vars(t) for r, t in roles.items()},
        "flips": flips(samples),
        "role_counts": role_counts(samples, t0),
        "errors": s["errors"],
    }


ATTAINMENT = 0.9  # REDISTRIBUTION.md: the rate sustained with >= 90% of requests in SLO


def next_probe(probes: Sequence[tuple[float, float]], target: float = ATTAINMENT) -> float:
    """The next rate scale to try in the search for the largest one whose SLO attainment
    is >= target: double past the passing ones, halve below the failing ones, then bisect."""
    if not probes:
        raise ValueError("the search starts from one measured rate scale")
    ok = [r for r, a in probes if a >= target]
    bad = [r for r, a in probes if a < target]
    if not bad:
        return 2.0 * max(ok)
    if not ok:
        return min(bad) / 2.0
    below = [r for r in ok if r < min(bad)]
    return (max(below, default=0.0) + min(bad)) / 2.0


def sustained(probes: Sequence[tuple[float, float]], target: float = ATTAINMENT) -> float | None:
    """The largest probed rate scale that met the target, below every failing one."""
    bad = min((r for r, a in probes if a < target), default=float("inf"))
    ok = [r for r, a in probes if a >= target and r < bad]
    return max(ok) if ok else None


# ----- I/O -----------------------------------------------------------------------------
@dataclass
class Sampler:
    ports: dict[str, int]
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> Sample:
        role, busy, pre, dec = {}, {}, {}, {}
        for w, port in self.ports.items():
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as resp:
                snap = parse(resp.read().decode())
            role[w] = next(
                (r for r in ROLES if snap.value("tandem_worker_role", role=r) == 1), "both"
            )
            busy[w] = snap.value("tandem_worker_busy_seconds_total") or 0.0
            pre[w] = snap.value("tandem_worker_tokens_total", phase="prefill") or 0.0
            dec[w] = snap.value("tandem_worker_tokens_total", phase="decode") or 0.0
        return Sample(time.monotonic(), role, busy, pre, dec)

    def run(self) -> None:
        while not self.stop.wait(1.0):
            try:
                self.samples.append(self.sample())
            except OSError:
                continue


class Serve:
    """One `tandem serve` process, up until close()."""

    def __init__(self, args: argparse.Namespace, policy: Policy, logdir: Path) -> None:
        from tandem.launch.spec import free_port

        self.port = free_port()
        self.log_path = logdir / f"{policy.name.replace(' ', '-').replace(':', '_')}.log"
        cmd = [sys.executable, "-m", "tandem.cli", "serve", "--device", args.device]
        cmd += ["--port", str(self.port), *(["--model", args.model] if args.model else [])]
        cmd += [*policy.serve_args, *args.serve_args.split()]
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
        self._wait_ready(args.ready_timeout)
        self.ports = {m[1]: int(m[2]) for m in STARTED.finditer(self.log_path.read_text())}

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout_s) or not self.proc.stdout.readline().startswith("Tandem"):
                self.close()
                raise RuntimeError(f"tandem serve did not start; see {self.log_path}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def run_policy(args: argparse.Namespace, policy: Policy, logdir: Path) -> dict[str, object]:
    print(f"== {policy.name}: tandem serve {' '.join(policy.serve_args)}", file=sys.stderr)
    serve = Serve(args, policy, logdir)
    try:
        sampler = Sampler(serve.ports)
        sampler.samples.append(sampler.sample())
        thread = threading.Thread(target=sampler.run, daemon=True)
        thread.start()
        t0 = time.monotonic()
        cfg = BenchConfig(
            url=f"http://127.0.0.1:{serve.port}",
            out=str(logdir / "replay.json"),
            trace=args.trace,
            time_scale=1.0 / args.rate_scale,
            max_requests=_capped(args),
            slo_ttft_s=args.slo_ttft,
            slo_tpot_s=args.slo_tpot,
            timeout_s=args.request_timeout,
        )
        report = asyncio.run(run(cfg))
        sampler.samples.append(sampler.sample())
        sampler.stop.set()
        thread.join(10)
    finally:
        serve.close()
    result = summarize(policy, report, sampler.samples, args.workers, t0)
    log = serve.log_path.read_text()
    result["flip_log_lines"] = [
        ln.split("tandem.serve: ", 1)[-1] for ln in log.splitlines() if "autoscale: flip" in ln
    ]
    return result


def _capped(args: argparse.Namespace) -> int | None:
    """Requests sent before --max-duration (replayed seconds); None: the whole trace."""
    if args.max_duration is None:
        return None
    trace = read_trace(args.trace, 1.0 / args.rate_scale)
    return max(1, sum(1 for r in trace if r.at_s < args.max_duration))


def device_info(device: str) -> dict[str, object]:
    info: dict[str, object] = {
        "device": device,
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if device == "cuda" and torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        info["tandem"] = version("tandem-serve")
    except PackageNotFoundError:
        info["tandem"] = "unknown"
    info["git_commit"] = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return info


def table(rows: Sequence[dict[str, object]]) -> str:
    head = f"{'policy':<12} {'goodput/s/w':>11} {'SLO att.':>8} {'busy P':>7} {'busy D':>7} {'busy both':>9} {'flips':>5} {'failed':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        busy = r["busy_fraction"]
        assert isinstance(busy, dict)

        def f(v: object) -> str:
            return "-" if v is None else f"{v:.2f}"

        lines.append(
            f"{r['policy']:<12} {r['goodput_per_s_per_worker']:>11.3f} {r['slo_attainment']:>8.2f} "
            f"{f(busy['prefill']):>7} {f(busy['decode']):>7} {f(busy['both']):>9} "
            f"{r['flips']:>5} {r['failed']:>6}"
        )
    return "\n".join(lines)


def plot(data: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = data["runs"]
    assert isinstance(runs, list)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 7))
    ax1.bar([r["policy"] for r in runs], [r["goodput_per_s_per_worker"] for r in runs])
    ax1.set_ylabel("goodput (req/s/worker)")
    cmp = data["comparison"]
    assert isinstance(cmp, dict)
    if "adaptive_over_best_static_goodput" in cmp and "fluid_bound" in cmp:
        ax1.text(
            0.99, 0.95,
            f"adaptive / best static {cmp['adaptive_over_best_static_goodput']:.2f}"
            f" (fluid bound {cmp['fluid_bound']['adaptive_over_static']:.2f})",
            transform=ax1.transAxes, ha="right", va="top",
        )  # fmt: skip
    ax1.set_title(f"{data['trace']}, N={data['workers']}, {data['device']['device']}")  # type: ignore[index]
    adaptive: dict[str, Any] = next(
        (r for r in runs if r["policy"] == "adaptive"), {"role_counts": []}
    )
    t = [c["t_s"] for c in adaptive["role_counts"]]
    for role in ("prefill", "decode"):
        ax2.step(t, [c[role] for c in adaptive["role_counts"]], where="post", label=role)
    ax2.axvline(data["phase_s"], color="grey", linestyle="--", label="mix shifts")  # type: ignore[arg-type]
    ax2.set_xlabel("replay time (s)")
    ax2.set_ylabel("adaptive: workers")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--model", default=None, help="model folder (default: the tiny model)")
    p.add_argument("--workers", type=int, default=3, help="N: workers (GPUs) of every policy")
    p.add_argument("--rate-scale", type=float, default=1.0, help="offered rate x this")
    p.add_argument(
        "--max-duration", type=float, default=None, help="replay at most this many seconds"
    )
    p.add_argument("--trace", default=str(ROOT / "tests/data/shifting-trace.csv"))
    p.add_argument("--phase-s", type=float, default=None,
                   help="where the mix shifts, trace seconds (default: from the trace's .json)")  # fmt: skip
    p.add_argument("--slo-ttft", type=float, default=2.0, help="TTFT SLO, seconds")
    p.add_argument("--slo-tpot", type=float, default=0.05, help="TPOT SLO, seconds")
    p.add_argument("--serve-args", default="--num-kv-blocks 512", help="flags for every policy")
    p.add_argument("--autoscale-args", default=AUTOSCALE_ARGS, help="flags for adaptive")
    p.add_argument("--only", default=None, help="comma-separated policy names to run")
    p.add_argument("--ready-timeout", type=float, default=600.0)
    p.add_argument("--request-timeout", type=float, default=300.0)
    p.add_argument("--bisect", type=int, default=0,
                   help="then search each policy's largest rate scale with >= 90%% of requests "
                   "in SLO, with this many more runs per policy")  # fmt: skip
    p.add_argument("--note", default="")
    p.add_argument("--out", required=True, help="path prefix: writes PREFIX.json and PREFIX.png")
    args = p.parse_args(argv)
    if not args.rate_scale > 0:
        raise SystemExit("--rate-scale: must be > 0")
    phase_s = args.phase_s
    if phase_s is None:
        phase_s = json.loads(Path(args.trace).with_suffix(".json").read_text())["spec"]["phase_s"]
    todo = policies(args.workers, args.autoscale_args.split())
    slo_args = ["--ttft-slo", str(args.slo_ttft), "--tpot-slo", str(args.slo_tpot)]
    todo = [Policy(x.name, (*x.serve_args, *slo_args)) if x.name == "adaptive" else x for x in todo]
    if args.only:
        todo = [x for x in todo if x.name in args.only.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_policy(args, x, Path(tmp)) for x in todo]
        searches = [search(args, x, r, Path(tmp)) for x, r in zip(todo, runs, strict=True)]
    data = report(args, runs, phase_s / args.rate_scale)
    if args.bisect:
        data["sustained_rate"] = sustained_report(searches)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(data, indent=2) + "\n")
    plot(data, Path(f"{args.out}.png"))
    print(table(runs))
    print(json.dumps(data["comparison"], indent=2))
    return 0


def search(
    args: argparse.Namespace, policy: Policy, first: dict[str, object], logdir: Path
) -> dict[str, object]:
    """`--bisect` more runs of one policy at other rate scales (none without it)."""
    probes = [(args.rate_scale, float(first["slo_attainment"]))]  # type: ignore[arg-type]
    for _ in range(args.bisect):
        scale = next_probe(probes)
        run_args = argparse.Namespace(**{**vars(args), "rate_scale": scale})
        probes.append((scale, float(run_policy(run_args, policy, logdir)["slo_attainment"])))  # type: ignore[arg-type]
    return {"policy": policy.name, "probes": probes, "sustained_rate_scale": sustained(probes)}


def sustained_report(searches: Sequence[dict[str, object]]) -> dict[str, object]:
    by = {str(x["policy"]): x["sustained_rate_scale"] for x in searches}
    static = {k: v for k, v in by.items() if k.startswith("static") and v is not None}
    best = max(static.values(), default=None)  # type: ignore[type-var]
    out: dict[str, object] = {"target_attainment": ATTAINMENT, "searches": list(searches)}
    for name in ("adaptive", "colocated"):
        v = by.get(name)
        if best and v is not None:
            out[f"{name}_over_best_static"] = float(v) / float(best)  # type: ignore[arg-type]
    return out


def report(
    args: argparse.Namespace, runs: list[dict[str, object]], phase_s: float
) -> dict[str, object]:
    trace = read_trace(args.trace, 1.0 / args.rate_scale)
    a, b = phases(trace, phase_s)
    static = [r for r in runs if str(r["policy"]).startswith("static")]
    best = max(static, key=lambda r: r["goodput_per_s_per_worker"]) if static else None  # type: ignore[arg-type, return-value]
    by = {r["policy"]: r for r in runs}
    comparison: dict[str, object] = {"best_static": best["policy"] if best else None}
    if static:
        c = costs(static)
        comparison["measured_costs"] = c
        comparison["fluid_bound"] = fluid_bound(
            a, b, c["prefill_s_per_token"], c["decode_s_per_token"]
        )
    for name in ("adaptive", "colocated"):
        if name in by and best and best["goodput_per_s_per_worker"]:
            comparison[f"{name}_over_best_static_goodput"] = (
                by[name]["goodput_per_s_per_worker"] / best["goodput_per_s_per_worker"]  # type: ignore[operator]
            )
    return {
        "benchmark": "bench/redistribution.py",
        "command": shlex.join([".venv/bin/python", *sys.argv]),
        "device": device_info(args.device),
        "model": args.model or "tiny (tandem model make-tiny)",
        "trace": args.trace
        if not args.trace.startswith(str(ROOT))
        else args.trace[len(str(ROOT)) + 1 :],
        "rate_scale": args.rate_scale,
        "max_duration_s": args.max_duration,
        "workers": args.workers,
        "phase_s": phase_s,
        "phases": {"prompt-heavy": vars(a), "output-heavy": vars(b)},
        "slo": {"ttft_s": args.slo_ttft, "tpot_s": args.slo_tpot},
        "serve_args": args.serve_args,
        "autoscale_args": args.autoscale_args,
        "note": args.note,
        "comparison": comparison,
        "runs": runs,
    }


if __name__ == "__main__":
    sys.exit(main())
