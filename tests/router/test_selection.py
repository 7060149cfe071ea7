from __future__ import annotations

import pytest

from tandem.router.selection import (
    Load,
    WorkerView,
    blocks_needed,
    disaggregate,
    pick_decode,
    pick_prefill,
)


def w(name: str, role: str = "decode", up: bool = True, inflight: int = 0, free: int = 100, running: int = 0,
      waiting: int = 0, draining: bool = False, prefill_tokens: int = 0, load: bool = True) -> WorkerView:
    figures = Load(role, waiting, running, 100, 100 - free, free, draining) if load else None
    return WorkerView(name, f"{name}:1", role, up, figures, inflight, prefill_tokens, 16)


@pytest.mark.parametrize(
    ("workers", "prompt", "limit", "expected"),
    [
        ([], 10, 8, None),
        ([w("a", up=False)], 10, 8, None),
        ([w("a", role="prefill")], 10, 8, None),
        ([w("a", draining=True)], 10, 8, None),
        ([w("a", inflight=8)], 10, 8, None),  # at its concurrency bound
        ([w("a", inflight=2), w("b", inflight=1)], 10, 8, "b"),
        ([w("a", running=5), w("b", inflight=1)], 10, 8, "b"),  # polled load counts too
        ([w("a", free=0), w("b", inflight=3)], 10, 8, "b"),  # a cannot hold the prompt
        ([w("a", free=10), w("b", free=90)], 10, 8, "b"),  # equal busy: more free KV wins
        ([w("b"), w("a")], 10, 8, "a"),  # full tie: by name
        ([w("a", role="both", inflight=1), w("b", inflight=4)], 10, 8, "a"),
        ([w("a", load=False)], 10, 8, "a"),  # not polled yet but up
    ],
)
def test_pick_decode(workers, prompt, limit, expected) -> None:
    chosen = pick_decode(workers, prompt, limit)
    assert (chosen.name if chosen else None) == expected


@pytest.mark.parametrize(
    ("prompt", "cached", "k", "have", "expected"),
    [(100, 0, 256, True, False), (300, 0, 256, True, True), (300, 100, 256, True, False),
     (256, 0, 256, True, True), (300, 0, 256, False, False), (1, 0, 0, True, True)],
)
def test_disaggregate(prompt, cached, k, have, expected) -> None:
    assert disaggregate(prompt, cached, k, have) is expected


@pytest.mark.parametrize(
    ("workers", "hits", "expected"),
    [
        ([w("d", role="decode")], {}, None),
        ([w("p", role="prefill", up=False)], {}, None),
        ([w("p1", role="prefill"), w("p2", role="prefill")], {"p2": 64}, "p2"),  # prefix cache
        ([w("p1", role="prefill", prefill_tokens=500), w("p2", role="prefill")], {"p1": 64}, "p2"),  # backlog
        ([w("p1", role="prefill", prefill_tokens=10), w("p2", role="prefill")], {"p1": 64}, "p1"),
        ([w("p2", role="prefill"), w("p1", role="prefill")], {}, "p1"),
        ([w("b", role="both"), w("p", role="prefill")], {"b": 100}, "p"),  # both-role workers serve colocated
    ],
)
def test_pick_prefill(workers, hits, expected) -> None:
    chosen = pick_prefill(workers, 100, hits)
    assert (chosen.name if chosen else None) == expected


@pytest.mark.parametrize(("tokens", "size", "blocks"), [(0, 16, 1), (15, 16, 1), (16, 16, 2), (31, 16, 2)])
def test_blocks_needed_counts_the_first_generated_token(tokens, size, blocks) -> None:
    assert blocks_needed(tokens, size) == blocks
