"""tandem.loadgen: trace parsing, clipping and the summary (pure parts)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tandem.loadgen.report import Result, meets_slo, over_time, percentile, summarize
from tandem.loadgen.trace import TraceRequest, clip, poisson, read_trace


def _csv(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "t.csv"
    p.write_text(text)
    return p


def test_read_trace_offsets_scale_and_cap(tmp_path: Path) -> None:
    p = _csv(tmp_path, "TIMESTAMP,ContextTokens,GeneratedTokens\n"
             "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.6805900,396,109\n"
             "2023-11-16 18:15:56.6805900,5,0\n")
    rows = read_trace(p, time_scale=0.5)
    assert [r.at_s for r in rows] == pytest.approx([0.0, 2.0, 5.0])
    assert rows[2] == TraceRequest(pytest.approx(5.0), 5, 1)  # zero outputs ask for one token
    assert len(read_trace(p, max_requests=2)) == 2


@pytest.mark.parametrize(
    ("text", "words"),
    [("a,b\n1,2\n", "expected columns"), ("TIMESTAMP,ContextTokens,GeneratedTokens\n", "no requests"),
     ("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,2\n", "row 2")],
)
def test_bad_traces(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        read_trace(_csv(tmp_path, text))


def test_shipped_trace_parses() -> None:
    rows = read_trace("/work/shared/traces/azure_conv_2023.csv", max_requests=50)
    assert len(rows) == 50 and rows[0].at_s == 0 and all(b.at_s >= a.at_s for a, b in itertools.pairwise(rows))


@pytest.mark.parametrize(
    ("prompt", "output", "ctx", "expected"),
    [(100, 10, 2048, (100, 10)), (4000, 100, 2048, (1948, 100)), (10, 5000, 2048, (1, 2047))],
)
def test_clip(prompt: int, output: int, ctx: int, expected: tuple[int, int]) -> None:
    out, info = clip([TraceRequest(0.0, prompt, output)], ctx)
    assert (out[0].prompt_tokens, out[0].output_tokens) == expected
    assert info.clipped_requests == (0 if expected == (prompt, output) else 1)
    assert out[0].prompt_tokens + out[0].output_tokens <= ctx


def test_poisson_rate() -> None:
    rows = poisson(10.0, 2000, 8, 4, seed=1)
    assert rows[-1].at_s / 1999 == pytest.approx(0.1, rel=0.1)


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 90) == pytest.approx(9.0)


def test_summary_goodput_and_failures() -> None:
    results = [
        Result(0.0, 10, 11, ttft_s=0.5, e2e_s=1.5, requested_tokens=12),  # tpot 0.1: meets both
        Result(0.1, 10, 11, ttft_s=2.0, e2e_s=3.0),  # misses TTFT
        Result(0.2, 10, 11, ttft_s=0.5, e2e_s=5.5),  # tpot 0.5: misses TPOT
        Result(0.3, 10, 0, None, None, "HTTP 503: busy"),
    ]
    assert [meets_slo(r, 1.0, 0.1) for r in results] == [True, False, False, False]
    s = summarize(results, duration_s=2.0, slo_ttft_s=1.0, slo_tpot_s=0.1)
    assert (s["completed"], s["failed"], s["output_length_mismatches"]) == (3, 1, 1)
    assert s["goodput"]["requests_meeting_slo"] == 1 and s["goodput"]["requests_per_s"] == 0.5
    assert s["throughput"]["output_tokens_per_s"] == 33 / 2.0
    assert s["errors"] == {"HTTP 503: busy": 1}
    assert s["ttft_s"]["p50"] == 0.5
    assert len(over_time(results, windows=2)) == 2
