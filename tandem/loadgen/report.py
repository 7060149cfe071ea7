"""Per-request measurements -> the benchmark's summary (pure)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    sent_at_s: float  # offset from the start of the replay
    prompt_tokens: int
    output_tokens: int  # tokens actually generated (from usage, else counted chunks)
    ttft_s: float | None
    e2e_s: float | None
    error: str | None = None
    requested_tokens: int | None = None  # what the request asked for (ignore_eos: should equal output_tokens)

    @property
    def ok(self) -> bool:
        return self.error is None and self.e2e_s is not None

    @property
    def tpot_s(self) -> float | None:
        if not self.ok or self.ttft_s is None or self.output_tokens < 2:
            return None
        assert self.e2e_s is not None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in [0, 100]); None for no values."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def stats(values: list[float]) -> dict[str, float | None]:
    return {
        "mean": sum(values) / len(values) if values else None,
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
    }


def meets_slo(r: Result, slo_ttft_s: float, slo_tpot_s: float) -> bool:
    if not r.ok or r.ttft_s is None or r.ttft_s > slo_ttft_s:
        return False
    tpot = r.tpot_s
    return tpot is None or tpot <= slo_tpot_s


def summarize(results: list[Result], duration_s: float, slo_ttft_s: float, slo_tpot_s: float) -> dict[str, object]:
    ok = [r for r in results if r.ok]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    tpot = [t for t in (r.tpot_s for r in ok) if t is not None]
    e2e = [r.e2e_s for r in ok if r.e2e_s is not None]
    good = sum(1 for r in ok if meets_slo(r, slo_ttft_s, slo_tpot_s))
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_tokens for r in ok)
    d = max(duration_s, 1e-9)
    errors: dict[str, int] = {}
    for r in results:
        if r.error is not None:
            errors[r.error[:120]] = errors.get(r.error[:120], 0) + 1
    return {
        "requests": len(results),
        "completed": len(ok),
        # Completed requests whose generated length differs from the one asked for
        # (a server that ignores ignore_eos or max_tokens skews every figure).
        "output_length_mismatches": sum(
            1 for r in ok if r.requested_tokens is not None and r.requested_tokens != r.output_tokens
        ),
        "failed": len(results) - len(ok),
        "errors": errors,
        "duration_s": duration_s,
        "ttft_s": stats(ttft),
        "tpot_s": stats(tpot),
        "e2e_s": stats(e2e),
        "throughput": {
            "requests_per_s": len(ok) / d,
            "output_tokens_per_s": out_tokens / d,
            "total_tokens_per_s": (in_tokens + out_tokens) / d,
        },
        "goodput": {
            "slo_ttft_s": slo_ttft_s,
            "slo_tpot_s": slo_tpot_s,
            "requests_meeting_slo": good,
            "requests_per_s": good / d,
            "fraction": good / len(results) if results else 0.0,
        },
    }


def over_time(results: list[Result], windows: int = 20) -> list[dict[str, float | None]]:
    """p50/p99 of TTFT and TPOT per window of send time, for the plot."""
    ok = [r for r in results if r.ok]
    if not ok:
        return []
    end = max(r.sent_at_s for r in ok) + 1e-9
    width = end / windows
    rows = []
    for i in range(windows):
        w = [r for r in ok if i * width <= r.sent_at_s < (i + 1) * width]
        if not w:
            continue
        ttft = [r.ttft_s for r in w if r.ttft_s is not None]
        tpot = [t for t in (r.tpot_s for r in w) if t is not None]
        rows.append({
            "t_s": (i + 0.5) * width,
            "requests": float(len(w)),
            "ttft_p50": percentile(ttft, 50), "ttft_p99": percentile(ttft, 99),
            "tpot_p50": percentile(tpot, 50), "tpot_p99": percentile(tpot, 99),
        })
    return rows
