"""Linear least squares (pure Python, a handful of terms): the calibration's fit.

The calibration grid has tens of points and at most five terms, so the normal
equations solved by Gaussian elimination with partial pivoting are exact
enough and keep the simulator free of numeric libraries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Fit:
    coefficients: tuple[float, ...]
    rel_error_mean: float  # mean |predicted - measured| / measured over the grid
    rel_error_max: float


def least_squares(
    rows: Sequence[Sequence[float]], y: Sequence[float], relative: bool = True
) -> Fit:
    """Coefficients c minimizing sum(w_i (x_i . c - y_i)^2); w_i = 1/y_i^2 when `relative`
    (every grid point counts by its relative error, so short steps are not drowned)."""
    if len(rows) != len(y) or not rows:
        raise ValueError(f"need as many targets as rows, got {len(rows)} rows and {len(y)} targets")
    k = len(rows[0])
    if len(rows) < k:
        raise ValueError(f"{k} terms need at least {k} measurements, got {len(rows)}")
    # Columns scaled to a max of 1: the terms differ by many orders of magnitude.
    scale = [max(abs(x[i]) for x in rows) or 1.0 for i in range(k)]
    a = [[0.0] * k for _ in range(k)]
    b = [0.0] * k
    for raw, t in zip(rows, y, strict=True):
        x = [v / s for v, s in zip(raw, scale, strict=True)]
        w = 1.0 / (t * t) if relative and t else 1.0
        for i in range(k):
            b[i] += w * x[i] * t
            for j in range(k):
                a[i][j] += w * x[i] * x[j]
    c = [v / s for v, s in zip(_solve(a, b), scale, strict=True)]
    errs = [
        abs(sum(ci * xi for ci, xi in zip(c, x, strict=True)) - t) / t
        for x, t in zip(rows, y, strict=True)
        if t
    ]
    return Fit(tuple(c), sum(errs) / len(errs) if errs else 0.0, max(errs, default=0.0))


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    n = len(b)
    m = [[*row[:], b[i]] for i, row in enumerate(a)]
    for col in range(n):
        piv = max(range(col, n), key=lambda r: abs(m[r][col]))
        if abs(m[piv][col]) < 1e-300:
            raise ValueError(f"the grid does not determine term {col}: vary it in the measurements")
        m[col], m[piv] = m[piv], m[col]
        for r in range(n):
            if r != col:
                f = m[r][col] / m[col][col]
                for j in range(col, n + 1):
                    m[r][j] -= f * m[col][j]
    return [m[i][n] / m[i][i] for i in range(n)]


def least_squares_bounded(
    rows: Sequence[Sequence[float]], y: Sequence[float], floors: Sequence[float | None]
) -> tuple[Fit, tuple[int, ...]]:
    """Least squares with lower bounds per term (None: unbounded): a term the free fit
    puts below its floor (a physical limit, or 0) is held at the floor and the others
    refitted, worst offender first. Returns the fit and the indices held at a floor."""
    k = len(floors)
    fixed: dict[int, float] = {}
    while True:
        free = [i for i in range(k) if i not in fixed]
        rest = [t - sum(x[i] * v for i, v in fixed.items()) for x, t in zip(rows, y, strict=True)]
        if free:
            # Residual targets can be near zero: weight by the measured value, not the residual.
            sub = least_squares_weighted([[x[i] for i in free] for x in rows], rest, y)
            coef = dict(zip(free, sub, strict=True))
        else:
            coef = {}
        bound = {i: f for i, f in enumerate(floors) if f is not None}
        low = [(bound[i] - v, i) for i, v in coef.items() if i in bound and v < bound[i]]
        if not low:
            break
        _, worst = max(low)
        fixed[worst] = bound[worst]
    c = [fixed.get(i, coef.get(i, 0.0)) for i in range(k)]
    errs = [
        abs(sum(ci * xi for ci, xi in zip(c, x, strict=True)) - t) / t
        for x, t in zip(rows, y, strict=True)
        if t
    ]
    fit = Fit(tuple(c), sum(errs) / len(errs) if errs else 0.0, max(errs, default=0.0))
    return fit, tuple(sorted(fixed))


def least_squares_weighted(
    rows: Sequence[Sequence[float]], y: Sequence[float], scale_by: Sequence[float]
) -> list[float]:
    """Coefficients minimizing sum(((x_i . c - y_i) / s_i)^2)."""
    scaled_rows = [[v / s for v in x] for x, s in zip(rows, scale_by, strict=True)]
    scaled_y = [t / s for t, s in zip(y, scale_by, strict=True)]
    return list(least_squares(scaled_rows, scaled_y, relative=False).coefficients)
