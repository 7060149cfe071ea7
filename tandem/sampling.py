"""Sampling parameters: the one vocabulary the router, the workers and the
offline API share. Pure Python (no torch), so the router can validate requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class InvalidRequest(ValueError):
    """A request the caller got wrong; the message names the field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop.

    `temperature == 0` means greedy. `top_k <= 0` disables top-k;
    `top_p == 1` disables nucleus sampling. `seed` makes sampling of this
    request reproducible regardless of what else is in the batch.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0
    # Filled by whoever knows the model (engine or router): ids that end generation
    # unless ignore_eos is set.
    eos_token_ids: tuple[int, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def validate(p: SamplingParams) -> None:
    """Raise InvalidRequest naming the first bad field."""
    if not isinstance(p.max_tokens, int) or isinstance(p.max_tokens, bool) or p.max_tokens < 1:
        raise InvalidRequest("max_tokens", f"must be an integer >= 1, got {p.max_tokens!r}")
    if not _is_number(p.temperature) or not 0.0 <= p.temperature <= 100.0:
        raise InvalidRequest("temperature", f"must be in [0, 100], got {p.temperature!r}")
    if not isinstance(p.top_k, int) or isinstance(p.top_k, bool) or p.top_k < -1:
        raise InvalidRequest("top_k", f"must be an integer >= -1 (0 or -1 disables), got {p.top_k!r}")
    if not _is_number(p.top_p) or not 0.0 < p.top_p <= 1.0:
        raise InvalidRequest("top_p", f"must be in (0, 1], got {p.top_p!r}")
    if p.seed is not None and (not isinstance(p.seed, int) or isinstance(p.seed, bool)):
        raise InvalidRequest("seed", f"must be an integer, got {p.seed!r}")
    if not isinstance(p.min_tokens, int) or p.min_tokens < 0:
        raise InvalidRequest("min_tokens", f"must be an integer >= 0, got {p.min_tokens!r}")
    for t in p.stop_token_ids:
        if not isinstance(t, int) or isinstance(t, bool) or t < 0:
            raise InvalidRequest("stop_token_ids", f"must be non-negative integers, got {t!r}")
    for s in p.stop:
        if not isinstance(s, str) or not s:
            raise InvalidRequest("stop", f"must be non-empty strings, got {s!r}")


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x  # NaN != NaN
