"""Fused residual-add + RMSNorm against the reference."""

from __future__ import annotations

import pytest
import torch

from tandem.kernels.checks import KernelInputError
from tandem.kernels.rms_norm import rms_norm, rms_norm_ref
from tests.kernels.inputs import DTYPES, ELEMENTWISE_TOL, poisoned, randn, rel_err


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("tokens", "hidden"), [(5, 48), (1, 1000), (3, 256)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_reference(
    dtype: torch.dtype, tokens: int, hidden: int, with_residual: bool
) -> None:
    gen = torch.Generator().manual_seed(hidden + tokens)
    x = randn(gen, tokens, hidden, dtype=dtype)
    weight = randn(gen, hidden, dtype=dtype)
    residual = randn(gen, tokens, hidden, dtype=dtype) if with_residual else None
    out = poisoned(tokens, hidden, dtype=dtype)
    res_out = poisoned(tokens, hidden, dtype=dtype) if with_residual else None
    normed, new_res = rms_norm(x, weight, 1e-6, residual, out=out, residual_out=res_out)
    ref_normed, ref_res = rms_norm_ref(x, weight, 1e-6, residual)
    assert normed.dtype == ref_normed.dtype
    assert rel_err(normed, ref_normed) < ELEMENTWISE_TOL[dtype]
    if with_residual:
        assert new_res is res_out
        assert rel_err(new_res, ref_res) < ELEMENTWISE_TOL[dtype]
    else:
        assert new_res is x


def test_rms_norm_rejects_wrong_weight_size() -> None:
    with pytest.raises(KernelInputError, match="weight"):
        rms_norm(torch.randn(2, 8), torch.randn(7), 1e-6)
