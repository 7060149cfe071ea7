from __future__ import annotations

import json
from pathlib import Path

import pytest

from tandem.cli import main
from tandem.sim import trace
from tandem.sim.command import parse_ratio


def test_tandem_sim_writes_the_figures_and_a_png(tmp_path: Path) -> None:
    src = tmp_path / "t.jsonl"
    trace.write_mooncake(trace.synthetic("multiturn", seed=1, duration_s=120), src)
    out = tmp_path / "r.json"
    rc = main(["sim", "--trace", str(src), "--gpus", "4", "--policy", "adaptive", "--ratio", "1:3",
               "--ttft-slo", "3", "--tpot-slo", "0.05", "--out", str(out)])  # fmt: skip
    assert rc == 0
    r = json.loads(out.read_text())
    for key in ("goodput_rps_per_gpu", "slo_attainment", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s",
                "utilization", "prefill_decode_imbalance", "requests", "gpus", "policy", "flips", "fluid_bound"):  # fmt: skip
        assert key in r, key
    assert r["requests"] == len(trace.read(src)) and r["gpus"] == 4 and r["policy"] == "adaptive"
    assert r["cost_model"]["name"] == "llama3-8b-NVIDIA H200" and not r["cost_model"]["provisional"]
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_static_without_ratio_searches_the_split(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    rc = main(["sim", "--trace", "synthetic:steady", "--duration", "120", "--gpus", "3", "--policy", "static",
               "--out", str(out)])  # fmt: skip
    assert rc == 0
    assert json.loads(out.read_text())["prefill_workers"] in (1, 2)


def test_bad_arguments_are_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert (
        main(
            [
                "sim",
                "--trace",
                "nope.csv",
                "--gpus",
                "4",
                "--policy",
                "colocated",
                "--out",
                str(tmp_path / "x.json"),
            ]
        )
        == 2
    )
    assert "nope.csv" in capsys.readouterr().err
    with pytest.raises(ValueError, match="must split the 4 GPUs"):
        parse_ratio("1:2", 4)
    with pytest.raises(ValueError, match="P:D"):
        parse_ratio("a:b", 4)
