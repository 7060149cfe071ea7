"""Fused SiLU-and-multiply against the reference."""

from __future__ import annotations

import pytest
import torch

from tandem.kernels.checks import KernelInputError
from tandem.kernels.silu_mul import silu_mul, silu_mul_ref
from tests.kernels.inputs import DTYPES, ELEMENTWISE_TOL, poisoned, randn, rel_err


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("tokens", "inter"), [(3, 40), (1, 1500), (4, 8)])
def test_silu_mul_matches_reference(dtype: torch.dtype, tokens: int, inter: int) -> None:
    gen = torch.Generator().manual_seed(inter)
    # A strided input: every row padded, as a column slice of a wider buffer.
    x = randn(gen, tokens, 2 * inter + 3, dtype=dtype)[:, : 2 * inter] * 4
    out = poisoned(tokens, inter, dtype=dtype)
    silu_mul(x, out=out)
    assert rel_err(out, silu_mul_ref(x)) < ELEMENTWISE_TOL[dtype]


def test_silu_mul_rejects_odd_width() -> None:
    with pytest.raises(KernelInputError, match="even"):
        silu_mul(torch.randn(2, 7))
