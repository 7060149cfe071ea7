"""A small, round-numbered cost model: fast runs whose figures are easy to check by hand."""

from __future__ import annotations

import pytest

from tandem.sim.cost import Ceilings, CostModel, Transport


def small_cost(kv_capacity_tokens: int = 60_000, **kw: object) -> CostModel:
    fields: dict[str, object] = dict(
        name="test", device="test device",
        prefill_base_s=0.005, prefill_per_token_s=25e-6, prefill_per_attn_s=1e-12,
        decode_base_s=0.005, decode_per_seq_s=1e-5, decode_per_ctx_token_s=4e-8,
        kv_bytes_per_token=131072, weight_bytes=16 * 10**9, flops_per_token=14e9,
        kv_capacity_tokens=kv_capacity_tokens, max_num_batched_tokens=8192, max_num_seqs=256,
        model_load_s=20.0, role_flip_s=2.5,
        ceilings=Ceilings(matmul_flops=7.5e14, memory_bytes_per_s=4.2e12, memory_bytes=141 * 10**9),
        transports=(Transport("cuda_ipc", 3e11, 5e-5), Transport("grpc", 6e8, 0.002)),
    )  # fmt: skip
    fields.update(kw)
    return CostModel(**fields)  # type: ignore[arg-type]


@pytest.fixture
def cost() -> CostModel:
    return small_cost()
