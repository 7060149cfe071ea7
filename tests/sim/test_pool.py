"""The simulation's invariants and its use of the real policy code."""

from __future__ import annotations

from typing import Any

import pytest

from tandem.sim import pool as pool_module
from tandem.sim import trace
from tandem.sim.config import SimConfig
from tandem.sim.cost import CostModel
from tandem.sim.pool import Simulation
from tandem.sim.report import tpot
from tandem.sim.search import simulate
from tandem.sim.trace import SimRequest
from tests.sim.conftest import small_cost

BURST = trace.phases([(120.0, 30.0, 3000, 200)], seed=4)  # well over what 4 GPUs sustain


@pytest.mark.parametrize("policy", ["colocated", "static", "adaptive"])
def test_every_request_finishes_or_is_rejected_with_a_reason(policy: str, cost: CostModel) -> None:
    cfg = SimConfig(4, policy, 0 if policy == "colocated" else 2, queue_timeout_s=5.0, shed=True)
    out = Simulation(cfg, cost, BURST).run()
    assert len(out.jobs) == len(BURST)
    outcomes = {j.outcome for j in out.jobs}
    assert "" not in outcomes  # nothing left in flight
    assert all(o == "ok" or o.startswith("rejected: ") for o in outcomes)
    assert any(o != "ok" for o in outcomes)  # the overload was shed, not silently served late
    for j in out.jobs:
        if j.outcome == "ok":
            assert j.arrival_s <= j.first_token_s <= j.finish_s
    for w in Simulation(cfg, cost, []).workers:
        assert w.pool.num_used == 0


@pytest.mark.parametrize("policy", ["colocated", "static", "adaptive"])
def test_busy_fraction_never_exceeds_one(policy: str, cost: CostModel) -> None:
    r = simulate(
        SimConfig(4, policy, 0 if policy == "colocated" else 2, interval_s=5.0), cost, BURST
    )
    assert 0.5 < r["utilization"]["mean"] <= 1.0
    for role in ("prefill", "decode", "both"):
        assert r["utilization"][role] is None or 0.0 <= r["utilization"][role] <= 1.0
    for s in r["over_time"]:
        assert all(0.0 <= b <= 1.0 for b in s["busy"].values())


def test_blocks_return_to_idle_after_the_run(cost: CostModel) -> None:
    reqs = trace.synthetic("multiturn", seed=2, duration_s=200)
    sim = Simulation(SimConfig(4, "static", 1), cost, reqs)
    sim.run()
    assert [w.pool.num_used for w in sim.workers] == [0, 0, 0, 0]
    assert sum(w.pool.num_cached for w in sim.workers) > 0  # shared prefixes stayed cached


def test_events_are_handled_in_time_order(cost: CostModel, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []
    real = Simulation._handle

    def record(self: Simulation, kind: int, obj: object) -> None:
        seen.append(self.now)
        real(self, kind, obj)

    monkeypatch.setattr(Simulation, "_handle", record)
    Simulation(SimConfig(4, "adaptive", 2, interval_s=5.0), cost, BURST[:400]).run()
    assert len(seen) > 400
    assert seen == sorted(seen)


def test_runs_are_deterministic(cost: CostModel) -> None:
    cfg = SimConfig(4, "adaptive", 2, interval_s=5.0)
    a = simulate(cfg, cost, BURST[:500])
    b = simulate(cfg, cost, BURST[:500])
    assert a["ttft_p99_s"] == b["ttft_p99_s"] and a["decisions"] == b["decisions"]


def test_one_request_costs_what_the_cost_model_says(cost: CostModel) -> None:
    """Colocated, alone: TTFT is one prefill step; TPOT one decode step at its context."""
    r = simulate(SimConfig(1, "colocated"), cost, [SimRequest(0.0, 1000, 11)])
    assert r["ttft_p50_s"] == pytest.approx(cost.prefill_s(1000, 1000 * 500))
    ctx = 1001 + 4.5  # the mean context over its 10 decode steps
    assert r["tpot_p50_s"] == pytest.approx(cost.decode_s(1, ctx), rel=1e-9)


def test_disaggregated_request_pays_the_transfer_it_cannot_hide() -> None:
    slow = small_cost(transports=(small_cost().transports[1],))  # grpc only, 0.6 GB/s
    r = simulate(SimConfig(2, "static", 1, transport="grpc"), slow, [SimRequest(0.0, 4000, 2)])
    prefill = slow.prefill_s(4000, 4000 * 2000)
    xfer = slow.transport("grpc").seconds(4000 * slow.kv_bytes_per_token)
    assert r["ttft_p50_s"] == pytest.approx(
        prefill + xfer - prefill
    )  # shipping overlaps the compute


def test_colocated_prefill_stretches_decode_steps(cost: CostModel) -> None:
    """Interference: a long prompt arriving mid-stream slows a colocated decode, not a split one."""
    reqs = [SimRequest(0.0, 100, 400), SimRequest(0.5, 8000, 2)]
    together = Simulation(SimConfig(1, "colocated"), cost, reqs).run().jobs[0]
    split = Simulation(SimConfig(2, "static", 1), cost, reqs).run().jobs[0]
    alone = Simulation(SimConfig(1, "colocated"), cost, reqs[:1]).run().jobs[0]
    assert tpot(split) == pytest.approx(tpot(alone), rel=0.01)
    stretch = cost.step_s(8000, 8000 * 4000, 1, 200) - cost.decode_s(
        1, 200
    )  # the mixed step's extra time
    assert tpot(together) == pytest.approx(tpot(alone) + stretch / 399, rel=0.01)


def test_prefix_hits_from_hash_ids_cut_prefill(cost: CostModel) -> None:
    shared = tuple(range(1, 9))  # 8 blocks of 512 tokens
    reqs = [SimRequest(0.0, 4100, 2, shared), SimRequest(10.0, 4100, 2, shared)]
    r = simulate(SimConfig(1, "colocated"), cost, reqs)
    first, second = sorted(j for j in [r["ttft_p50_s"], r["ttft_p99_s"]])
    assert second == pytest.approx(cost.prefill_s(4100, 4100 * 2050))
    assert first < second / 5  # the second prompt computes only what the cache lacks


def test_the_planner_is_called_with_the_scraped_signals(
    cost: CostModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = pool_module.plan

    def spy(policy, signals, state, now):  # type: ignore[no-untyped-def]
        calls.append(signals)
        return real(policy, signals, state, now)

    monkeypatch.setattr(pool_module, "plan", spy)
    simulate(SimConfig(4, "adaptive", 2, interval_s=10.0), cost, BURST[:2000])
    assert len(calls) >= 5
    s = calls[2]
    assert {w.role for w in s.workers} == {"prefill", "decode"} and s.window_s == 10.0
    assert all(w.busy is not None and 0 <= w.busy <= 1 for w in s.workers)
    assert any(w.kv_blocks_used > 0 for w in s.workers) and s.ttft_p99_s is not None


SHIFT = [(600.0, 7.0, 6000, 100), (600.0, 7.0, 300, 1500)]  # prompt-heavy, then output-heavy
STEADY = [(600.0, 7.0, 6000, 100), (600.0, 7.0, 6000, 100)]


def _runs(spec: list[tuple[float, float, int, int]], cost: CostModel) -> dict[str, dict[str, Any]]:
    reqs = trace.phases(spec, seed=0)

    def cfg(policy: str, p: int) -> SimConfig:
        return SimConfig(
            4, policy, p, ttft_slo_s=2.0, tpot_slo_s=0.05, interval_s=10.0, unit_tokens=512
        )

    out = {f"static {p}": simulate(cfg("static", p), cost, reqs) for p in (1, 2, 3)}
    out["adaptive"] = simulate(cfg("adaptive", 2), cost, reqs)
    return out


def test_steady_mix_adaptive_matches_the_best_static_split_without_flipping(
    cost: CostModel,
) -> None:
    runs = _runs(STEADY, cost)
    best = max(float(r["slo_attainment"]) for k, r in runs.items() if k.startswith("static"))
    assert runs["adaptive"]["flips"] == 0
    assert float(runs["adaptive"]["slo_attainment"]) >= best - 0.03


def test_shifting_mix_makes_the_planner_flip_and_gain(cost: CostModel) -> None:
    runs = _runs(SHIFT, cost)
    adaptive = float(runs["adaptive"]["slo_attainment"])
    assert int(runs["adaptive"]["flips"]) >= 1
    assert adaptive > float(runs["static 2"]["slo_attainment"]) + 0.1  # from where it started
