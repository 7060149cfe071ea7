"""Phase-aware step composition (pure): how many prefill tokens may join a
step that also carries decode rows, so that running decodes keep their TPOT.

A decode row gets one token per step, so a running request's time per output
token is the step time. The step time is modelled as

    seconds ~= base_s + decode_row_s * rows + prefill_token_s * prefill_tokens

with the three figures fitted online (`StepCost.learn`, exponentially weighted
least squares over measured steps: nothing here is a constant of the device).
`split` then gives prefill the largest chunk whose predicted step time stays
within the TPOT SLO, never less than `min_prefill_tokens` (so prefill always
makes progress) and never more than the step's token budget leaves. When every
decode row plus that floor would already exceed the SLO, the step carries only
the decode rows that fit (the scheduler keeps the most urgent ones; the others
wait a step: under overload low-priority decodes absorb the delay, bounded by
aging). When not even one row fits the SLO cannot be met at all, and nothing
is held back ("infeasible"). Without an SLO, without running decodes, or
before the model has seen enough steps, prefill takes all the budget the
decodes leave (the plain unified-budget behaviour).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Steps to see before the fitted figures are trusted.
MIN_SAMPLES = 4
#: Weight kept by the past at each new step (about the last 50 steps matter).
DECAY = 0.98
# Relative ridge on the normal equations: keeps a feature that never varied
# (e.g. always one decode row) from making them singular.
_RIDGE = 1e-6


@dataclass(frozen=True)
class StepPolicy:
    tpot_slo_s: float | None = None  # None: no SLO, prefill fills the budget
    min_prefill_tokens: int = 16  # floor per step while prefill work exists

    def __post_init__(self) -> None:
        if self.tpot_slo_s is not None and not self.tpot_slo_s > 0:
            raise ValueError(f"tpot_slo_s must be > 0, got {self.tpot_slo_s}")
        if self.min_prefill_tokens < 1:
            raise ValueError(f"min_prefill_tokens must be >= 1, got {self.min_prefill_tokens}")


@dataclass(frozen=True)
class StepCost:
    """Exponentially weighted sums of x x^T and x t for x = (1, rows, tokens)."""

    xx: tuple[float, ...] = (0.0,) * 9  # row-major 3x3
    xt: tuple[float, float, float] = (0.0, 0.0, 0.0)
    samples: int = 0

    def learn(
        self, decode_rows: int, prefill_tokens: int, seconds: float, decay: float = DECAY
    ) -> StepCost:
        """Fold one measured step in (steps that computed nothing are ignored)."""
        if decode_rows + prefill_tokens <= 0 or not seconds > 0 or not math.isfinite(seconds):
            return self
        x = (1.0, float(decode_rows), float(prefill_tokens))
        xx = tuple(decay * v + x[i // 3] * x[i % 3] for i, v in enumerate(self.xx))
        xt = (
            decay * self.xt[0] + seconds,
            decay * self.xt[1] + x[1] * seconds,
            decay * self.xt[2] + x[2] * seconds,
        )
        return StepCost(xx, xt, self.samples + 1)

    @property
    def fitted(self) -> bool:
        return self.samples >= MIN_SAMPLES

    def coefficients(self) -> tuple[float, float, float]:
        """(base_s, decode_row_s, prefill_token_s), each >= 0; zeros before any sample."""
        return _solve(self.xx, self.xt)

    def predict(self, decode_rows: int, prefill_tokens: int) -> float:
        base, row, tok = self.coefficients()
        return base + row * decode_rows + tok * prefill_tokens


@dataclass(frozen=True)
class Split:
    decode_rows: int  # most decode rows this step may carry (the most urgent ones)
    prefill_tokens: int  # most prefill tokens this step may carry
    limited_by: str  # "budget" | "slo" | "rows" (least urgent decodes wait) | "infeasible"


def split(
    policy: StepPolicy,
    cost: StepCost,
    decode_rows: int,
    token_budget: int,
    prefill_pending: int = 1 << 62,
) -> Split:
    """Split one step's token budget between decode rows and prefill tokens
    (`prefill_pending`: prefill tokens waiting to be computed)."""
    rows = min(decode_rows, token_budget)
    room = token_budget - rows
    if policy.tpot_slo_s is None or rows == 0 or not cost.fitted:
        return Split(rows, room, "budget")
    slo = policy.tpot_slo_s
    base, per_row, per_token = cost.coefficients()
    floor = min(policy.min_prefill_tokens, prefill_pending, token_budget)
    if cost.predict(rows, min(floor, room)) > slo:
        return _fewer_rows(slo, (base, per_row, per_token), rows, floor, token_budget)
    allowed = math.floor((slo - cost.predict(rows, 0)) / per_token) if per_token > 0 else room
    if allowed >= room:
        return Split(rows, room, "budget")
    return Split(rows, max(allowed, min(floor, room)), "slo")


def extra_rows(
    policy: StepPolicy,
    cost: StepCost,
    share: Split,
    rows: int,
    prefill_tokens: int,
    budget_left: int,
) -> int:
    """Less urgent decode rows that may still join a step already holding `rows`
    rows and `prefill_tokens` prefill tokens: what the SLO still allows (all of
    the budget without an SLO, or when the SLO cannot be met anyway)."""
    if policy.tpot_slo_s is None or not cost.fitted or share.limited_by == "infeasible":
        return max(0, budget_left)
    base, per_row, _ = cost.coefficients()
    if per_row <= 0 or base + per_row > policy.tpot_slo_s:
        return max(0, budget_left)  # not even one row alone meets the SLO: nothing to protect
    spare = policy.tpot_slo_s - cost.predict(rows, prefill_tokens)
    return max(0, min(budget_left, math.floor(spare / per_row)))


def _fewer_rows(
    slo: float, coef: tuple[float, float, float], rows: int, floor: int, budget: int
) -> Split:
    """Every decode row plus the prefill floor would exceed the SLO: keep the most
    urgent rows that fit next to the floor (the rest wait this step). When not
    even one fits, the SLO cannot be met at all and nothing is held back."""
    base, per_row, per_token = coef
    fit = math.floor((slo - base - per_token * floor) / per_row) if per_row > 0 else rows
    if fit < 1:
        return Split(rows, budget - rows, "infeasible")
    fit = min(fit, rows)
    return Split(fit, min(floor, budget - fit), "rows")


def _solve(xx: tuple[float, ...], xt: tuple[float, float, float]) -> tuple[float, float, float]:
    """Least squares on the features that were ever non-zero; negative figures clamp to 0."""
    active = [i for i in range(3) if xx[4 * i] > 0]
    if not active:
        return (0.0, 0.0, 0.0)
    a = [[xx[3 * i + j] + (_RIDGE * xx[4 * i] if i == j else 0.0) for j in active] for i in active]
    b = [xt[i] for i in active]
    sol = _gauss(a, b)
    out = [0.0, 0.0, 0.0]
    for i, v in zip(active, sol, strict=True):
        out[i] = max(0.0, v)
    return (out[0], out[1], out[2])


def _gauss(a: list[list[float]], b: list[float]) -> list[float]:
    n = len(b)
    m = [[*row, b[i]] for i, row in enumerate(a)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        m[col], m[pivot] = m[pivot], m[col]
        if m[col][col] == 0:
            return [0.0] * n
        for r in range(n):
            if r != col:
                f = m[r][col] / m[col][col]
                m[r] = [x - f * y for x, y in zip(m[r], m[col], strict=True)]
    return [m[i][n] / m[i][i] for i in range(n)]
