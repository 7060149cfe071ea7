"""Workload traces -> a schedule of requests (pure).

A trace row gives an arrival time and lengths only; the load generator turns it
into a prompt of exactly that many token ids and asks for exactly that many
output tokens. Lengths that do not fit the served model's context are clipped
(and counted, so the report can say so).
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True)
class TraceRequest:
    at_s: float  # offset from the start of the replay
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Clipping:
    clipped_requests: int
    max_model_len: int


def read_trace(path: str | Path, time_scale: float = 1.0, max_requests: int | None = None) -> list[TraceRequest]:
    """Read a TIMESTAMP,ContextTokens,GeneratedTokens trace. Offsets are multiplied by
    `time_scale` (0.1 replays ten times faster)."""
    if not time_scale > 0:
        raise ValueError(f"time scale must be > 0, got {time_scale}")
    rows: list[tuple[float, int, int]] = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        needed = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}
        if not needed <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: expected columns {sorted(needed)}, got {reader.fieldnames}")
        for i, row in enumerate(reader):
            if max_requests is not None and i >= max_requests:
                break
            try:
                t = _timestamp(row["TIMESTAMP"])
                rows.append((t, int(row["ContextTokens"]), int(row["GeneratedTokens"])))
            except ValueError as exc:
                raise ValueError(f"{path}: row {i + 2}: {exc}") from None
    if not rows:
        raise ValueError(f"{path}: no requests")
    t0 = rows[0][0]
    return [TraceRequest((t - t0) * time_scale, max(1, p), max(1, o)) for t, p, o in rows]


def _timestamp(text: str) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    # Seven fractional digits (100 ns) are more than datetime parses; keep microseconds.
    if "." in text:
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:6]}"
    return datetime.fromisoformat(text).timestamp()


def poisson(rate: float, count: int, prompt_tokens: int, output_tokens: int, seed: int = 0) -> list[TraceRequest]:
    """A synthetic open-loop workload: Poisson arrivals at `rate` req/s, fixed lengths."""
    if not rate > 0 or count < 1:
        raise ValueError("a synthetic workload needs --rate > 0 and --max-requests >= 1")
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(count):
        out.append(TraceRequest(t, prompt_tokens, output_tokens))
        t += rng.expovariate(rate)
    return out


def clip(requests: list[TraceRequest], max_model_len: int) -> tuple[list[TraceRequest], Clipping]:
    """Fit each request into the context: output first capped below the context, then the prompt."""
    out, clipped = [], 0
    for r in requests:
        o = min(r.output_tokens, max_model_len - 1)
        p = min(r.prompt_tokens, max_model_len - o)
        if (p, o) != (r.prompt_tokens, r.output_tokens):
            clipped += 1
        out.append(TraceRequest(r.at_s, p, o))
    return out, Clipping(clipped, max_model_len)
