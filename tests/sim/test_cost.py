from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tandem.sim import cost as cost_model
from tandem.sim.cost import CostError, CostModel
from tandem.sim.fit import least_squares, least_squares_bounded
from tests.sim.conftest import small_cost

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "model",
    [
        cost_model.builtin("llama3-8b-h200-provisional"),
        cost_model.load(ROOT / "bench/results/calibration-tiny-cpu.json"),
    ],
    ids=["h200-provisional", "cpu-tiny"],
)
def test_shipped_cost_models_stay_within_the_device_ceilings(model: CostModel) -> None:
    assert model.violations() == []
    c = model.ceilings
    # Prefill at a full step: below the matmul limit.
    tokens = model.max_num_batched_tokens
    assert (
        tokens / model.prefill_s(tokens, tokens * tokens / 2)
        < c.matmul_flops / model.flops_per_token
    )
    # A decode step reads the weights and every context token's KV at least once.
    for batch, ctx in ((1, 1000), (64, 64 * 2000), (model.max_num_seqs, model.kv_capacity_tokens)):
        floor = (model.weight_bytes + ctx * model.kv_bytes_per_token) / c.memory_bytes_per_s
        assert model.decode_s(batch, ctx) >= floor
    # The KV cache fits beside the weights.
    assert (
        model.weight_bytes + model.kv_capacity_tokens * model.kv_bytes_per_token <= c.memory_bytes
    )


def test_h200_provisional_figures_are_labelled_and_plausible() -> None:
    m = cost_model.builtin("llama3-8b-h200-provisional")
    assert "derived from engine-llama3-8b-h100.json" in m.provisional
    assert (
        30_000 < 1 / m.prefill_per_token_s < 61_000
    )  # tokens/s; 61k is the dense bf16 peak for 8B
    assert 0.003 < m.decode_s(1, 1000) < 0.006  # H100 measured 7.0 ms, H200 has 1.43x the bandwidth
    assert m.kv_bytes_per_token == 131072 and 500_000 < m.kv_capacity_tokens < 1_000_000


@pytest.mark.parametrize(
    ("change", "message"),
    [({"prefill_per_token_s": 1e-6}, "exceeds the matmul limit"), ({"decode_base_s": 1e-4}, "faster than reading"),
     ({"decode_per_ctx_token_s": 1e-12}, "beats reading its KV"), ({"kv_capacity_tokens": 10**7}, "exceed device memory")],
)  # fmt: skip
def test_violations_name_the_broken_bound(change: dict[str, float], message: str) -> None:
    bad = dataclasses.replace(small_cost(), **change)  # type: ignore[arg-type]
    assert any(message in v for v in bad.violations())


def test_negative_terms_and_unknown_transports_are_errors() -> None:
    with pytest.raises(CostError, match="decode_per_seq_s must be >= 0"):
        small_cost(decode_per_seq_s=-1.0)
    with pytest.raises(CostError, match="no transport 'rdma'"):
        small_cost().transport("rdma")


def test_json_round_trip_and_bad_file(tmp_path: Path) -> None:
    m = small_cost()
    (tmp_path / "c.json").write_text(json.dumps({"cost": m.to_dict()}))
    assert cost_model.load(tmp_path / "c.json") == m
    (tmp_path / "bad.json").write_text('{"name": "x"}')
    with pytest.raises(CostError, match=r"bad\.json: not a cost model"):
        cost_model.load(tmp_path / "bad.json")


def test_step_times_follow_the_terms() -> None:
    m = small_cost()
    assert m.prefill_s(1000, 500_000) == pytest.approx(0.005 + 0.025 + 5e-7)
    assert m.decode_s(10, 10_000) == pytest.approx(0.005 + 1e-4 + 4e-4)
    # A mixed step: decode rows ride the prefill step as tokens, plus their context reads.
    assert m.step_s(1000, 500_000, 10, 10_000) == pytest.approx(m.prefill_s(1010, 500_000) + 4e-4)
    assert m.transport("grpc").seconds(6e8) == pytest.approx(1.002)


def test_least_squares_recovers_exact_terms_and_reports_error() -> None:
    rows = [[1.0, b, b * c] for b in (1, 8, 64) for c in (100, 1000, 8000)]
    y = [0.005 + 2e-5 * r[1] + 4e-8 * r[2] for r in rows]
    fit = least_squares(rows, y)
    assert fit.coefficients == pytest.approx((0.005, 2e-5, 4e-8), rel=1e-6)
    assert fit.rel_error_max < 1e-9
    noisy = least_squares(rows, [v * (1.1 if i % 2 else 0.9) for i, v in enumerate(y)])
    assert 0.05 < noisy.rel_error_mean < 0.15
    with pytest.raises(ValueError, match="does not determine term"):
        least_squares([[1.0, 0.0], [1.0, 0.0]], [1.0, 2.0])


def test_bounded_fit_holds_a_term_at_its_floor_and_refits_the_rest() -> None:
    rows = [[1.0, n, n * n / 2] for n in (256, 1024, 4096, 8192)]
    y = [0.01 + 1.5e-5 * r[1] + 1e-12 * r[2] for r in rows]
    free, held = least_squares_bounded(rows, y, [0.0, 1e-5, 0.0])
    assert held == () and free.coefficients == pytest.approx((0.01, 1.5e-5, 1e-12), rel=1e-6)
    fit, held = least_squares_bounded(rows, y, [0.0, 2e-5, 0.0])  # a floor above the truth
    assert 1 in held and fit.coefficients[1] == 2e-5
    assert all(c >= 0 for c in fit.coefficients) and fit.rel_error_mean > 0


def test_h200_measured_calibration_is_close_to_its_grid() -> None:
    data = json.loads((ROOT / "bench/results/calibration-llama3-8b-h200.json").read_text())
    m = CostModel.from_dict(data["cost"])
    assert m.device == "NVIDIA H200" and not m.provisional
    assert (
        m.fit_error["decode_rel_error_mean"] < 0.1 and m.fit_error["prefill_rel_error_mean"] < 0.15
    )
    for p in data["measurements"]["points"]["decode"]:
        assert m.decode_s(int(p["batch"]), p["context"]) == pytest.approx(p["seconds"], rel=0.2)
