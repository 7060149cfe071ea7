"""The simulator's predictions against a measured `tandem serve` run on the same trace.

    python bench/validate_sim.py            # against bench/results/serve-azure-conv-tiny-cpu-quarter-rate.json

The measured run: `tandem serve --device cpu` (tiny model, 1 prefill + 1 decode
worker, router --min-prompt-tokens 256) replayed by `tandem bench serve` on the
first 60 requests of the Azure conversation trace at a quarter of its rate
(time x4), lengths clipped to the 2048-token context exactly as the load
generator clips them. The simulation: the same requests, the same split, the
CPU calibration of the tiny model (bench/results/calibration-tiny-cpu.json),
shm between the two workers (one host). Prints the relative error of request
throughput, TTFT p50 and TPOT p50 (that run recorded no busy fraction, so
busy is not compared) and writes bench/results/sim-validation-cpu-tiny.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tandem.loadgen.trace import clip
from tandem.loadgen.trace import read_trace as read_loadgen
from tandem.sim import cost as cost_model
from tandem.sim.config import SimConfig
from tandem.sim.search import simulate
from tandem.sim.trace import SimRequest

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.15


def requests_of(measured: dict[str, Any], trace_path: Path) -> list[SimRequest]:
    cfg = measured["config"]
    rows = read_loadgen(trace_path, cfg["time_scale"], cfg["max_requests"])
    rows, _ = clip(rows, measured["workload"]["clipped_to_context"]["max_model_len"])
    return [SimRequest(r.at_s, r.prompt_tokens, r.output_tokens) for r in rows]


def compare(measured: dict[str, Any], predicted: dict[str, Any]) -> dict[str, dict[str, float]]:
    s = measured["summary"]
    pairs = {
        "throughput_rps": (
            s["throughput"]["requests_per_s"],
            predicted["finished"] / predicted["simulated_s"],
        ),
        "ttft_p50_s": (s["ttft_s"]["p50"], predicted["ttft_p50_s"]),
        "tpot_p50_s": (s["tpot_s"]["p50"], predicted["tpot_p50_s"]),
    }
    return {
        k: {"measured": m, "predicted": p, "rel_error": (p - m) / m} for k, (m, p) in pairs.items()
    }


def validate(measured_path: Path, cost_path: Path, trace_path: Path) -> dict[str, Any]:
    measured = json.loads(measured_path.read_text())
    reqs = requests_of(measured, trace_path)
    cost = cost_model.load(cost_path)
    slo = measured["config"]
    cfg = SimConfig(2, "static", 1, slo["slo_ttft_s"], slo["slo_tpot_s"], transport="shm")
    predicted = simulate(cfg, cost, reqs)
    return {"bench": "validate_sim", "measured": str(measured_path.relative_to(ROOT)),
            "cost": str(cost_path.relative_to(ROOT)), "requests": len(reqs), "target_rel_error": TARGET,
            "figures": compare(measured, predicted)}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--measured",
        type=Path,
        default=ROOT / "bench/results/serve-azure-conv-tiny-cpu-quarter-rate.json",
    )
    ap.add_argument("--cost", type=Path, default=ROOT / "bench/results/calibration-tiny-cpu.json")
    ap.add_argument("--trace", type=Path, default=ROOT.parent / "shared/traces/azure_conv_2023.csv")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/sim-validation-cpu-tiny.json")
    args = ap.parse_args()
    result = validate(args.measured.resolve(), args.cost.resolve(), args.trace)
    for k, f in result["figures"].items():
        ok = "within" if abs(f["rel_error"]) <= TARGET else "OUTSIDE"
        print(f"{k:>15}: measured {f['measured']:.4g}, simulated {f['predicted']:.4g}, "
              f"error {f['rel_error']:+.1%} ({ok} {TARGET:.0%})")  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
