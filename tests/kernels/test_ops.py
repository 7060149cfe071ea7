"""Dispatch: CPU tensors go to the references, CUDA tensors to Triton."""

from __future__ import annotations

import pytest
import torch

from tandem.kernels import ops
from tandem.kernels.rotary_store_kv import rotary_store_kv_ref
from tests.kernels.inputs import DEVICE, ELEMENTWISE_TOL, randn, rel_err, rope_tables


def test_cpu_tensors_use_the_references() -> None:
    assert not ops.use_triton(torch.zeros(1))


def test_rotary_store_kv_op_matches_reference_on_cpu() -> None:
    gen = torch.Generator().manual_seed(3)
    cos, sin = rope_tables(64, 16)
    q, k, v = (torch.randn(4, h, 16, generator=gen) for h in (4, 2, 2))
    positions = torch.tensor([0, 5, 9, 63])
    slots = torch.tensor([3, -1, 0, 7])
    caches = [torch.zeros(2, 4, 2, 16) for _ in range(4)]
    got = ops.rotary_store_kv(q, k, v, positions, cos.cpu(), sin.cpu(), caches[0], caches[1], slots)
    want = rotary_store_kv_ref(q, k, v, positions, cos.cpu(), sin.cpu(), caches[2], caches[3], slots)
    assert torch.equal(got, want)
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])
    assert caches[0].abs().sum() > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_use_triton_and_agree() -> None:
    gen = torch.Generator().manual_seed(5)
    assert ops.use_triton(torch.zeros(1, device=DEVICE))
    x = randn(gen, 9, 512, dtype=torch.bfloat16)
    w = randn(gen, 512, dtype=torch.bfloat16)
    res = randn(gen, 9, 512, dtype=torch.bfloat16)
    got, got_res = ops.rms_norm(x, w, 1e-5, res)
    want, want_res = ops._rms_norm.rms_norm_ref(x, w, 1e-5, res)
    assert rel_err(got, want) < ELEMENTWISE_TOL[torch.bfloat16]
    assert rel_err(got_res, want_res) < ELEMENTWISE_TOL[torch.bfloat16]
