"""Request traces for the simulator (pure): Azure 2023 CSV, Mooncake JSONL, synthetic.

Mooncake's format: one JSON object per line with `timestamp` (ms), `input_length`,
`output_length` and `hash_ids`, each naming one 512-token block of the prompt
(equal ids = equal prefixes), which the simulator turns into prefix-cache hits.
Azure rows have no hash ids: their prompts share nothing. A malformed line is an
error naming the file, the line and the field; nothing is skipped.
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

HASH_BLOCK_TOKENS = 512  # Mooncake's prefix block
T = TypeVar("T")


class TraceError(ValueError):
    """A trace that cannot be read; the message names the line and field."""


@dataclass(frozen=True, slots=True)
class SimRequest:
    arrival_s: float
    input_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] = ()  # one per 512-token prompt block; () = nothing shared


def read(path: str | Path) -> list[SimRequest]:
    """By extension: .csv (Azure 2023) or .jsonl (Mooncake)."""
    p = Path(path)
    if p.suffix == ".csv":
        return read_azure(p)
    if p.suffix in (".jsonl", ".json"):
        return read_mooncake(p)
    raise TraceError(f"{p}: unknown trace format {p.suffix!r} (expected .csv or .jsonl)")


def read_azure(path: str | Path) -> list[SimRequest]:
    with open(path, newline="") as f:
        return parse_azure(f, str(path))


def parse_azure(lines: Iterable[str], where: str = "trace") -> list[SimRequest]:
    reader = csv.DictReader(lines)
    need = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
    missing = [c for c in need if c not in (reader.fieldnames or ())]
    if missing:
        raise TraceError(
            f"{where}: line 1: missing column(s) {', '.join(missing)} (have {reader.fieldnames})"
        )
    rows: list[tuple[float, int, int]] = []
    for row in reader:
        line = reader.line_num
        t = _field(where, line, "TIMESTAMP", row, _timestamp)
        n_in = _field(where, line, "ContextTokens", row, _count)
        n_out = _field(where, line, "GeneratedTokens", row, _count)
        rows.append((t, n_in, n_out))
    return _from_rows(rows, where)


def read_mooncake(path: str | Path) -> list[SimRequest]:
    with open(path) as f:
        return parse_mooncake(f, str(path))


def parse_mooncake(lines: Iterable[str], where: str = "trace") -> list[SimRequest]:
    out: list[tuple[float, int, int, tuple[int, ...]]] = []
    for line_no, text in enumerate(lines, start=1):
        if not text.strip():
            raise TraceError(f"{where}: line {line_no}: empty line")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{where}: line {line_no}: not JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise TraceError(
                f"{where}: line {line_no}: expected an object, got {type(obj).__name__}"
            )
        ts = _field(where, line_no, "timestamp", obj, _millis)
        n_in = _field(where, line_no, "input_length", obj, _count)
        n_out = _field(where, line_no, "output_length", obj, _count)
        hashes = _field(where, line_no, "hash_ids", obj, _hashes) if "hash_ids" in obj else ()
        if len(hashes) > -(-n_in // HASH_BLOCK_TOKENS):
            raise TraceError(
                f"{where}: line {line_no}: field 'hash_ids': {len(hashes)} blocks of {HASH_BLOCK_TOKENS} "
                f"tokens exceed input_length {n_in}"
            )
        out.append((ts / 1000.0, n_in, n_out, hashes))
    if not out:
        raise TraceError(f"{where}: no requests")
    t0 = min(r[0] for r in out)
    reqs = [SimRequest(t - t0, i, o, h) for t, i, o, h in out]
    reqs.sort(key=lambda r: r.arrival_s)  # stable: equal timestamps keep file order
    return reqs


def write_mooncake(requests: Sequence[SimRequest], path: str | Path) -> None:
    with open(path, "w") as f:
        for r in requests:
            obj = {"timestamp": round(r.arrival_s * 1000.0, 3), "input_length": r.input_tokens,
                   "output_length": r.output_tokens, "hash_ids": list(r.hash_ids)}  # fmt: skip
            f.write(json.dumps(obj) + "\n")


def scale_rate(
    requests: Sequence[SimRequest], rate_scale: float, seed: int = 0, jitter_s: float = 1.0
) -> list[SimRequest]:
    """The trace at `rate_scale` times its request rate, over the same duration.

    Whole copies of the trace are overlaid (the fraction left over is a random
    thinning of one more copy), each arrival moved by up to `jitter_s` so that
    copies do not land on the very same instant. Time is not compressed: a mix
    that shifts keeps its phases as long as they were, which a planner with
    minute-long windows needs. Copies get their own prefix ids (another tenant
    with the same shape of traffic), so they do not hit each other's cache.
    """
    if not (rate_scale > 0 and math.isfinite(rate_scale)):
        raise ValueError(f"rate scale must be > 0, got {rate_scale}")
    if rate_scale == 1.0:
        return list(requests)
    rng = random.Random(seed)
    stride = 1 + max((h for r in requests for h in r.hash_ids), default=0)
    whole, part = int(rate_scale), rate_scale - int(rate_scale)
    out: list[SimRequest] = []
    for copy in range(whole + (1 if part > 1e-9 else 0)):
        keep = 1.0 if copy < whole else part
        for r in requests:
            if keep < 1.0 and rng.random() >= keep:
                continue
            t = r.arrival_s + (rng.random() * jitter_s if copy else 0.0)
            hashes = tuple(h + copy * stride for h in r.hash_ids) if copy else r.hash_ids
            out.append(SimRequest(t, r.input_tokens, r.output_tokens, hashes))
    out.sort(key=lambda r: r.arrival_s)
    return out


# ----- synthetic workloads --------------------------------------------------


@dataclass(frozen=True)
class MultiTurn:
    """Multi-turn long-context chat: sessions arrive as a Poisson process; each opens
    with a shared document or system prompt (one of `documents`, so sessions share
    prefixes), and every turn's prompt is the whole conversation so far plus a new
    user message; think times between turns are log-normal."""

    duration_s: float = 600.0
    sessions_per_s: float = 0.5
    documents: int = 20
    document_tokens: tuple[int, int] = (4096, 24576)  # uniform range
    turns: tuple[int, int] = (2, 8)
    user_tokens: tuple[int, int] = (32, 512)
    output_tokens_median: float = 250.0
    think_s_median: float = 20.0
    max_context: int = 65536


def multi_turn(spec: MultiTurn, seed: int = 0) -> list[SimRequest]:
    rng = random.Random(seed)
    docs = [rng.randint(*spec.document_tokens) for _ in range(spec.documents)]
    next_hash = 1 + spec.documents * (spec.document_tokens[1] // HASH_BLOCK_TOKENS + 1)
    out: list[SimRequest] = []
    t = rng.expovariate(spec.sessions_per_s)
    while t < spec.duration_s:
        d = rng.randrange(spec.documents)
        # The document's own blocks are shared by every session that opens with it.
        hashes = [
            1 + d * (spec.document_tokens[1] // HASH_BLOCK_TOKENS + 1) + i
            for i in range(docs[d] // HASH_BLOCK_TOKENS)
        ]
        context, at = docs[d], t
        for _ in range(rng.randint(*spec.turns)):
            context += rng.randint(*spec.user_tokens)
            if context >= spec.max_context:
                break
            full = context // HASH_BLOCK_TOKENS
            while len(hashes) < full:  # this session's own history, shared by its later turns
                hashes.append(next_hash)
                next_hash += 1
            n_out = max(
                1, min(int(rng.lognormvariate(math.log(spec.output_tokens_median), 0.8)), 4096)
            )
            out.append(SimRequest(at, context, n_out, tuple(hashes[:full])))
            context += n_out
            at += rng.lognormvariate(math.log(spec.think_s_median), 0.6) + n_out * 0.02
        t += rng.expovariate(spec.sessions_per_s)
    out.sort(key=lambda r: r.arrival_s)
    return out


def phases(spec: Sequence[tuple[float, float, int, int]], seed: int = 0) -> list[SimRequest]:
    """Poisson phases back to back: (duration_s, rate, input_tokens, output_tokens) each,
    lengths drawn log-normally around the given medians; no shared prefixes."""
    rng = random.Random(seed)
    out: list[SimRequest] = []
    start = 0.0
    for duration, rate, n_in, n_out in spec:
        t = start + rng.expovariate(rate)
        while t < start + duration:
            i = max(1, int(rng.lognormvariate(math.log(n_in), 0.3)))
            o = max(1, int(rng.lognormvariate(math.log(n_out), 0.3)))
            out.append(SimRequest(t, i, o))
            t += rng.expovariate(rate)
        start += duration
    return out


def synthetic(name: str, seed: int = 0, duration_s: float | None = None) -> list[SimRequest]:
    """Named synthetic traces for `tandem sim --trace synthetic:NAME`."""
    if name == "multiturn":
        spec = MultiTurn() if duration_s is None else MultiTurn(duration_s=duration_s)
        return multi_turn(spec, seed)
    if name in ("shift", "steady"):
        d = (duration_s or 1200.0) / 2
        prompt_heavy = (d, 1.0, 8000, 200)  # long-context chat: input/output ~40
        output_heavy = (d, 1.5, 600, 2000)  # reasoning: input/output ~0.3
        return phases(
            [prompt_heavy, output_heavy] if name == "shift" else [prompt_heavy, prompt_heavy], seed
        )
    raise TraceError(f"unknown synthetic trace {name!r} (have: multiturn, shift, steady)")


# ----- fields ---------------------------------------------------------------


def _field(
    where: str, line: int, name: str, row: Mapping[str, object], conv: Callable[[object], T]
) -> T:
    if name not in row or row[name] is None or row[name] == "":
        raise TraceError(f"{where}: line {line}: field {name!r} is missing")
    try:
        return conv(row[name])
    except (TypeError, ValueError) as exc:
        raise TraceError(f"{where}: line {line}: field {name!r}: {exc}") from None


def _count(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise ValueError(f"expected a whole number, got {v!r}")
    n = int(v)
    if n < 1:
        raise ValueError(f"must be >= 1, got {n}")
    return n


def _millis(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"expected milliseconds as a number, got {v!r}")
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"must be a finite number >= 0, got {v!r}")
    return float(v)


def _hashes(v: object) -> tuple[int, ...]:
    if not isinstance(v, list) or not all(
        isinstance(h, int) and not isinstance(h, bool) and h >= 0 for h in v
    ):
        raise ValueError(f"expected a list of block ids (integers >= 0), got {v!r}")
    return tuple(v)


def _timestamp(text: object) -> float:
    s = str(text).strip()
    try:
        return float(s)
    except ValueError:
        pass
    if "." in s:  # seven fractional digits (100 ns) are more than datetime parses
        head, frac = s.split(".", 1)
        s = f"{head}.{frac[:6]}"
    try:
        return datetime.fromisoformat(s).timestamp()
    except ValueError:
        raise ValueError(f"not a timestamp: {text!r}") from None


def _from_rows(rows: list[tuple[float, int, int]], where: str) -> list[SimRequest]:
    if not rows:
        raise TraceError(f"{where}: no requests")
    t0 = min(r[0] for r in rows)
    out = [SimRequest(t - t0, i, o) for t, i, o in rows]
    out.sort(key=lambda r: r.arrival_s)
    return out
