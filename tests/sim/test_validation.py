"""The simulator against a measured `tandem serve` run (bench/validate_sim.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT.parent / "shared/traces/azure_conv_2023.csv"


@pytest.mark.skipif(
    not TRACE.exists(), reason="the Azure trace is not checked out beside the repository"
)
def test_simulated_serve_run_matches_throughput_and_stays_below_measured_latency() -> None:
    spec = importlib.util.spec_from_file_location("validate_sim", ROOT / "bench/validate_sim.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    result = mod.validate(
        ROOT / "bench/results/serve-azure-conv-tiny-cpu-quarter-rate.json",
        ROOT / "bench/results/calibration-tiny-cpu.json",
        TRACE,
    )
    f = result["figures"]
    assert result["requests"] == 60
    assert abs(f["throughput_rps"]["rel_error"]) <= 0.15
    # The cost model times engine steps only; the serving path (router, gRPC, HTTP) adds to
    # both latencies, so the simulation must not predict more than was measured.
    assert 0 < f["ttft_p50_s"]["predicted"] <= f["ttft_p50_s"]["measured"]
    assert 0 < f["tpot_p50_s"]["predicted"] <= f["tpot_p50_s"]["measured"]
