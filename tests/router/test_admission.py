from __future__ import annotations

import pytest

from tandem.router.admission import Backlog, PrefillRate, decide, estimate_ttft

RATE = PrefillRate(seconds_per_token=0.001, overhead_s=0.01)


@pytest.mark.parametrize(
    ("backlog", "prompt", "expected"),
    [(Backlog(0, 1), 100, 0.11), (Backlog(1000, 1), 100, 1.11), (Backlog(1000, 4), 100, 0.36), (Backlog(1000, 0), 0, 1.01)],
)
def test_estimate(backlog, prompt, expected) -> None:
    assert estimate_ttft(RATE, backlog, prompt) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("backlog", "prompt", "left", "admit"),
    [(Backlog(0, 1), 100, None, True), (Backlog(0, 1), 100, 0.2, True), (Backlog(1000, 1), 100, 1.0, False),
     (Backlog(1000, 2), 100, 1.0, True), (Backlog(0, 1), 100, -1.0, False)],
)
def test_decide(backlog, prompt, left, admit) -> None:
    d = decide(RATE, backlog, prompt, left)
    assert d.admit is admit
    if not admit:
        assert "deadline cannot be met" in d.reason and f"{prompt} in this prompt" in d.reason


@pytest.mark.parametrize(
    ("tokens", "seconds", "expected"),
    [(1000, 1.01, 0.0008 + 0.2 * 0.001), (0, 1.0, 0.001), (100, 0.005, 0.001), (100, -1, 0.001)],
)
def test_learn(tokens, seconds, expected) -> None:
    assert RATE.learn(tokens, seconds).seconds_per_token == pytest.approx(expected)
