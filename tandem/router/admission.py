"""Deadline-aware admission (pure): will this request's first token arrive in time?

The estimate is deliberately simple and explainable: the prompt tokens that
will be prefilled before this request (queued work of equal or higher priority
plus prefills already running), spread over the workers that can prefill, plus
this prompt, divided by a learned prefill rate, plus a fixed per-request
overhead. The rate is learned online from measured prefill times.
"""

from __future__ import annotations

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
    if time_left_s is None or estimate <= time_left_s:
        return Decision(True, estimate)
    reason = (
        f"deadline cannot be met: estimated time to first token {estimate * 1000:.0f} ms "
        f"({backlog.tokens_ahead} prompt tokens ahead over {max(1, backlog.prefill_workers)} "
        f"worker(s), {prompt_tokens} in this prompt) exceeds the {max(time_left_s, 0) * 1000:.0f} ms left"
    )
    return Decision(False, estimate, reason)
