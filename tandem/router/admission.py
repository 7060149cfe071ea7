"""Deadline-aware admission (pure): will this request's first token arrive in time?

The estimate is deliberately simple and explainable: the prompt tokens that
will be prefilled before this request (queued work of equal or higher priority
plus prefills already running), spread over the workers that can prefill, plus
this prompt, divided by a learned prefill rate, plus a fixed per-request
overhead. The rate is learned online from measured prefill times.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PrefillRate:
    seconds_per_token: float = 1.0 / 4000.0
    overhead_s: float = 0.02

    def learn(self, tokens: int, seconds: float, weight: float = 0.2) -> PrefillRate:
        """Fold one measured prefill (tokens computed, seconds taken) into the estimate."""
        if tokens <= 0 or seconds <= 0:
            return self
        per_token = max(seconds - self.overhead_s, 0.0) / tokens
        if per_token == 0.0:
            return self
        blended = (1 - weight) * self.seconds_per_token + weight * per_token
        return PrefillRate(blended, self.overhead_s)


@dataclass(frozen=True)
class Backlog:
    tokens_ahead: int  # prompt tokens queued or prefilling that will go before this request
    prefill_workers: int  # workers sharing that backlog


@dataclass(frozen=True)
class Decision:
    admit: bool
    estimate_s: float
    reason: str = ""


def estimate_ttft(rate: PrefillRate, backlog: Backlog, prompt_tokens: int) -> float:
    workers = max(1, backlog.prefill_workers)
    tokens = backlog.tokens_ahead / workers + prompt_tokens
    return rate.overhead_s + tokens * rate.seconds_per_token


def decide(rate: PrefillRate, backlog: Backlog, prompt_tokens: int, time_left_s: float | None) -> Decision:
    """Admit unless the estimated TTFT exceeds the time left before the deadline."""
    estimate = estimate_ttft(rate, backlog, prompt_tokens)
    ahead = f"{backlog.tokens_ahead} prompt tokens ahead over {max(1, backlog.prefill_workers)} worker(s)"
    return _verdict(estimate, time_left_s, f"{ahead}, {prompt_tokens} in this prompt")


def _verdict(estimate: float, time_left_s: float | None, detail: str) -> Decision:
    """Admit unless the estimate exceeds the time left; the refusal says why."""
    if time_left_s is None or estimate <= time_left_s:
        return Decision(True, estimate)
    reason = (
        f"deadline cannot be met: estimated time to first token {estimate * 1000:.0f} ms "
        f"({detail}) exceeds the {max(time_left_s, 0) * 1000:.0f} ms left"
    )
    return Decision(False, estimate, reason)


# ----- per-worker rates ------------------------------------------------------
# Each prefill worker's rate is learned from its own measured prefills, so a
# slower (or busier, or older-GPU) worker counts for what it delivers.


def pooled_seconds_per_token(rates: Sequence[PrefillRate], workers: int, prior: PrefillRate) -> float:
    """Seconds per backlog token for `workers` prefill workers draining it together:
    1 / (sum of their token rates). Workers not measured yet count at the mean
    of the measured ones (or at `prior` when none is)."""
    measured = [r.seconds_per_token for r in rates if r.seconds_per_token > 0][: max(workers, 1)]
    typical = sum(measured) / len(measured) if measured else prior.seconds_per_token
    per_worker = measured + [typical] * max(0, workers - len(measured))
    return 1.0 / sum(1.0 / s for s in per_worker)


def estimate_ttft_measured(
    rates: Sequence[PrefillRate], workers: int, prior: PrefillRate, tokens_ahead: int, prompt_tokens: int
) -> float:
    """Backlog over the pool's pooled rate, plus this prompt at one worker's typical rate."""
    pooled = pooled_seconds_per_token(rates, workers, prior)
    measured = [r for r in rates if r.seconds_per_token > 0]
    one = sum(r.seconds_per_token for r in measured) / len(measured) if measured else prior.seconds_per_token
    overhead = sum(r.overhead_s for r in measured) / len(measured) if measured else prior.overhead_s
    return overhead + tokens_ahead * pooled + prompt_tokens * one


def decide_measured(
    rates: Sequence[PrefillRate],
    workers: int,
    prior: PrefillRate,
    tokens_ahead: int,
    prompt_tokens: int,
    time_left_s: float | None,
) -> Decision:
    """`decide` with each worker's own measured rate instead of one shared rate."""
    estimate = estimate_ttft_measured(rates, workers, prior, tokens_ahead, prompt_tokens)
    ahead = f"{tokens_ahead} prompt tokens ahead over {max(1, workers)} worker(s) at their measured rates"
    return _verdict(estimate, time_left_s, f"{ahead}, {prompt_tokens} in this prompt")


def drain_seconds(rates: Sequence[PrefillRate], workers: int, prior: PrefillRate, tokens_ahead: int) -> float:
    """How long the pool needs to work off `tokens_ahead`: the Retry-After of a shed request."""
    return tokens_ahead * pooled_seconds_per_token(rates, workers, prior)
