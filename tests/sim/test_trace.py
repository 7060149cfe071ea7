from __future__ import annotations

import io

import pytest

from tandem.sim import trace
from tandem.sim.trace import SimRequest, TraceError

AZURE = (
    "TIMESTAMP,ContextTokens,GeneratedTokens\n"
    "2023-11-16 18:15:46.6805900,374,44\n"
    "2023-11-16 18:15:50.9951690,396,109\n"
)


def test_azure_rows_parse_to_exact_values() -> None:
    got = trace.parse_azure(io.StringIO(AZURE), "t.csv")
    assert [(r.input_tokens, r.output_tokens, r.hash_ids) for r in got] == [
        (374, 44, ()),
        (396, 109, ()),
    ]
    assert got[0].arrival_s == 0.0
    assert got[1].arrival_s == pytest.approx(4.314579, abs=1e-6)


@pytest.mark.parametrize(
    ("row", "field"),
    [("2023-11-16 18:15:50,abc,10", "ContextTokens"), ("2023-11-16 18:15:50,10,0", "GeneratedTokens"),
     ("yesterday,10,10", "TIMESTAMP"), ("2023-11-16 18:15:50,10,", "GeneratedTokens")],
)  # fmt: skip
def test_azure_bad_row_names_line_and_field(row: str, field: str) -> None:
    with pytest.raises(TraceError, match=rf"t\.csv: line 3: field '{field}'"):
        trace.parse_azure(
            io.StringIO(AZURE.splitlines()[0] + "\n" + AZURE.splitlines()[1] + "\n" + row + "\n"),
            "t.csv",
        )


def test_azure_missing_column() -> None:
    with pytest.raises(TraceError, match="line 1: missing column"):
        trace.parse_azure(io.StringIO("TIMESTAMP,ContextTokens\n1,2\n"), "t.csv")


MOONCAKE = (
    '{"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 2353, 2354]}\n'
    '{"timestamp": 27000, "input_length": 700, "output_length": 5, "hash_ids": [46, 47]}\n'
)


def test_mooncake_lines_parse_to_exact_values_sorted_by_time() -> None:
    got = trace.parse_mooncake(io.StringIO(MOONCAKE), "m.jsonl")
    assert got[0] == SimRequest(0.0, 700, 5, (46, 47))
    assert got[1].arrival_s == pytest.approx(0.482)
    assert got[1].hash_ids[-1] == 2354 and len(got[1].hash_ids) == 14


@pytest.mark.parametrize(
    ("line", "message"),
    [("not json", "line 2: not JSON"), ('{"timestamp": 1, "output_length": 5}', "line 2: field 'input_length' is missing"),
     ('{"timestamp": -1, "input_length": 5, "output_length": 5}', "line 2: field 'timestamp'"),
     ('{"timestamp": 1, "input_length": 5, "output_length": 5, "hash_ids": [1, "x"]}', "line 2: field 'hash_ids'"),
     ('{"timestamp": 1, "input_length": 5, "output_length": 5, "hash_ids": [1, 2]}', "line 2: field 'hash_ids': 2 blocks"),
     ('{"timestamp": 1, "input_length": 5.5, "output_length": 5}', "line 2: field 'input_length'"),
     ("", "line 2: empty line"), ("[1]", "line 2: expected an object")],
)  # fmt: skip
def test_mooncake_bad_line_names_line_and_field(line: str, message: str) -> None:
    with pytest.raises(TraceError, match=message):
        trace.parse_mooncake(io.StringIO(MOONCAKE.splitlines()[0] + "\n" + line + "\n"), "m.jsonl")


def test_mooncake_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    reqs = trace.synthetic("multiturn", seed=3, duration_s=120)
    trace.write_mooncake(reqs, tmp_path / "t.jsonl")
    back = trace.read(tmp_path / "t.jsonl")
    assert [(r.input_tokens, r.output_tokens, r.hash_ids) for r in back] == [
        (r.input_tokens, r.output_tokens, r.hash_ids) for r in reqs
    ]
    assert back[-1].arrival_s == pytest.approx(reqs[-1].arrival_s - reqs[0].arrival_s, abs=1e-3)


def test_multi_turn_contexts_grow_and_share_prefixes() -> None:
    reqs = trace.multi_turn(
        trace.MultiTurn(duration_s=300, sessions_per_s=0.2, documents=2), seed=1
    )
    assert reqs == trace.multi_turn(
        trace.MultiTurn(duration_s=300, sessions_per_s=0.2, documents=2), seed=1
    )
    assert all(len(r.hash_ids) == r.input_tokens // 512 for r in reqs)
    firsts = {r.hash_ids[0] for r in reqs}
    assert len(firsts) <= 2  # every session opens with one of the two documents
    # A later turn of a session extends an earlier prompt: its hash ids start with the earlier ones.
    assert any(a.hash_ids and b.hash_ids[: len(a.hash_ids)] == a.hash_ids and b.input_tokens > a.input_tokens
               for a in reqs for b in reqs if b.arrival_s > a.arrival_s)  # fmt: skip


def test_scale_rate_overlays_copies_without_compressing_time() -> None:
    base = trace.phases([(100.0, 2.0, 1000, 100)], seed=0)
    doubled = trace.scale_rate(base, 2.0)
    assert len(doubled) == 2 * len(base)
    assert max(r.arrival_s for r in doubled) <= max(r.arrival_s for r in base) + 1.0
    half = trace.scale_rate(base, 0.5, seed=1)
    assert 0.3 * len(base) < len(half) < 0.7 * len(base)
    with pytest.raises(ValueError, match="rate scale"):
        trace.scale_rate(base, 0.0)


def test_copies_get_their_own_prefix_ids() -> None:
    base = [SimRequest(0.0, 1024, 8, (1, 2))]
    two = trace.scale_rate(base, 2.0)
    assert two[0].hash_ids == (1, 2) and two[1].hash_ids == (4, 5)


def test_unknown_format_and_synthetic() -> None:
    with pytest.raises(TraceError, match="unknown trace format"):
        trace.read("x.parquet")
    with pytest.raises(TraceError, match="unknown synthetic trace"):
        trace.synthetic("nope")
