"""Arguments of `tandem bench serve` (registered by tandem.router.command)."""

from __future__ import annotations

import argparse
import asyncio
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000")
    p.add_argument("--trace", default=None, help="CSV with TIMESTAMP,ContextTokens,GeneratedTokens")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="multiply trace arrival offsets by this (0.1 = ten times the trace's rate)")
    p.add_argument("--max-requests", type=int, default=None, help="replay at most this many requests")
    p.add_argument("--rate", type=float, default=None, help="synthetic Poisson arrivals (req/s) when no trace")
    p.add_argument("--prompt-tokens", type=int, default=512, help="synthetic workload prompt length")
    p.add_argument("--output-tokens", type=int, default=128, help="synthetic workload output length")
    p.add_argument("--slo-ttft", type=float, default=1.0, help="TTFT SLO in seconds (goodput)")
    p.add_argument("--slo-tpot", type=float, default=0.1, help="TPOT SLO in seconds (goodput)")
    p.add_argument("--token-id-range", default="10:1000", help="prompt token ids are drawn from LO:HI")
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout, seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--note", default=None, help="free text stored in the JSON (e.g. the server's setup)")
    p.add_argument("--out", required=True, help="JSON results file")
    p.add_argument("--plot", default=None, help="PNG of latency percentiles over time")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from tandem.loadgen.bench import BenchConfig, run, write

    try:
        lo, hi = (int(x) for x in args.token_id_range.split(":"))
        cfg = BenchConfig(
            url=args.url, out=args.out, trace=args.trace, time_scale=args.time_scale,
            max_requests=args.max_requests, rate=args.rate, prompt_tokens=args.prompt_tokens,
            output_tokens=args.output_tokens, slo_ttft_s=args.slo_ttft, slo_tpot_s=args.slo_tpot,
            plot=args.plot, note=args.note, timeout_s=args.timeout, seed=args.seed, token_id_range=(lo, hi),
        )
    except ValueError as exc:
        raise SystemExit(f"tandem bench serve: {exc}") from None
    data = asyncio.run(run(cfg))
    write(cfg, data)
    print(json.dumps(data["summary"], indent=2))
    return 0
