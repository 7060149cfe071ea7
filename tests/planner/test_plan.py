"""The planner, branch by branch, with exact expected decisions."""

from __future__ import annotations

import dataclasses

import pytest

from tandem.planner import (
    Decision,
    Flip,
    PlannerState,
    Policy,
    PoolSignals,
    Recommendation,
    RoleBounds,
    WorkerSignal,
    plan,
)

# Windows and cooldown off unless a test is about them: one call decides.
FAST = Policy(
    prefill=RoleBounds(1, 8),
    decode=RoleBounds(1, 8),
    max_gpus=4,
    ttft_slo_s=1.0,
    tpot_slo_s=0.05,
    scale_up_window_s=0,
    scale_down_window_s=0,
    cooldown_s=0,
)


def prefill(name: str, busy: float, **kw: object) -> WorkerSignal:
    return WorkerSignal(name, "prefill", busy=busy, **kw)  # type: ignore[arg-type]


def decode(name: str, kv: float, busy: float = 0.5, running: int = 4, **kw: object) -> WorkerSignal:
    used = int(kv * 1000)
    return WorkerSignal(
        name,
        "decode",
        busy=busy,
        running=running,
        kv_blocks_used=used,
        kv_blocks_total=1000,
        **kw,  # type: ignore[arg-type]
    )


def pool(*workers: WorkerSignal, **kw: object) -> PoolSignals:
    return PoolSignals(tuple(workers), 10.0, requests=100, **kw)  # type: ignore[arg-type]


def run(
    signals: PoolSignals,
    policy: Policy = FAST,
    state: PlannerState | None = None,
    now: float = 100.0,
) -> Decision:
    return plan(policy, signals, state or PlannerState(), now)


# ----- sizing per role --------------------------------------------------------


@pytest.mark.parametrize(
    ("signals", "action", "counts", "flips", "remove", "adds"),
    [
        # Both roles at target (pressure 1.0 within tolerance): nothing.
        (pool(prefill("p0", 0.8), decode("d0", 0.8)), "none", (1, 1), (), (), (0, 0)),
        # Within tolerance (0.85/0.8 = 1.06): nothing.
        (pool(prefill("p0", 0.85), decode("d0", 0.75)), "none", (1, 1), (), (), (0, 0)),
        # Prefill saturated, budget free: add one prefill worker (ceil(1 x 1.25) = 2).
        (pool(prefill("p0", 1.0), decode("d0", 0.8)), "scale", (2, 1), (), (), (1, 0)),
        # Decode KV at 100%: ceil(2 x 1.25) = 3 decode workers; budget 4 allows one more.
        (pool(prefill("p0", 0.8), decode("d0", 1.0), decode("d1", 1.0)), "scale", (1, 3), (), (), (0, 1)),
        # Idle decode: shrink by the step limit (max(1, 25% of 3) = 1), least loaded first.
        (
            pool(prefill("p0", 0.8), decode("d0", 0.1, running=3), decode("d1", 0.1, running=1), decode("d2", 0.1, running=2)),
            "scale", (1, 2), (), ("d1",), (0, 0),
        ),
    ],
)  # fmt: skip
def test_sizing(
    signals: PoolSignals,
    action: str,
    counts: tuple[int, int],
    flips: tuple[Flip, ...],
    remove: tuple[str, ...],
    adds: tuple[int, int],
) -> None:
    d = run(signals)
    assert d.action == action, d.reason
    assert (d.prefill, d.decode) == counts
    assert d.flips == flips
    assert d.remove == remove
    assert (d.add_prefill, d.add_decode) == adds


def test_min_replicas_floor_holds_on_an_idle_pool() -> None:
    d = run(pool(prefill("p0", 0.0), decode("d0", 0.0, busy=0.0, running=0)))
    assert d.action == "none"
    assert (d.prefill, d.decode) == (1, 1)


def test_scale_up_is_bounded_by_the_step_limit() -> None:
    # Pressure 50 capped at 4: ceil(3 x 4) = 12, but one step adds at most max(4, 100% of 3).
    p = dataclasses.replace(FAST, max_gpus=None, prefill=RoleBounds(1, None))
    three = (prefill("p0", 1.0), prefill("p1", 1.0), prefill("p2", 1.0))
    d = run(pool(*three, decode("d0", 0.8), ttft_p99_s=50.0), p)
    assert d.pressure["prefill"] == 4.0
    assert d.prefill == 7 and d.add_prefill == 4


# ----- the GPU budget and flips -------------------------------------------------


def test_budget_reached_flips_the_least_loaded_flexible_worker() -> None:
    signals = pool(
        prefill("p0", 1.0),
        prefill("p1", 1.0),
        decode("d0", 0.1, running=5),
        decode("d1", 0.1, running=2),
        ttft_p99_s=3.0,
    )
    d = run(signals)
    assert d.action == "flip"
    assert d.flips == (Flip("d1", "decode", "prefill"),)
    assert (d.prefill, d.decode) == (3, 1)
    assert d.limited.startswith("maxGPUs=4 binds")
    assert "ttft p99 3s/1s" in d.reason


def test_fixed_workers_are_never_flipped() -> None:
    signals = pool(
        prefill("p0", 1.0),
        prefill("p1", 1.0),
        decode("d0", 0.1, running=1, flexible=False),
        decode("d1", 0.1, running=9),
        ttft_p99_s=3.0,
    )
    assert run(signals).flips == (Flip("d1", "decode", "prefill"),)


def test_no_flip_when_it_would_not_serve_the_bottleneck_clearly_better() -> None:
    # Both roles equally over target: moving a worker only moves the bottleneck.
    signals = pool(prefill("p0", 1.0), prefill("p1", 1.0), decode("d0", 1.0), decode("d1", 1.0))
    d = run(signals)
    assert d.action == "none"
    assert (d.prefill, d.decode) == (2, 2)
    assert d.limited  # the budget is what holds the pool back, and it says so


def test_without_role_switching_the_budget_holds_and_nothing_flips() -> None:
    p = dataclasses.replace(FAST, role_switching=False)
    signals = pool(
        prefill("p0", 1.0), prefill("p1", 1.0), decode("d0", 0.1), decode("d1", 0.1), ttft_p99_s=3.0
    )
    d = run(signals, p)
    assert d.flips == ()
    # Decode shrinks (it is idle) and the freed GPU goes to prefill as a new worker.
    assert d.remove == ("d0",) and d.add_prefill == 1
    assert (d.prefill, d.decode) == (3, 1)


def test_growth_beyond_the_budget_is_cut_to_what_fits() -> None:
    p = dataclasses.replace(FAST, max_gpus=3)
    d = run(pool(prefill("p0", 1.0), decode("d0", 1.0)), p)
    # Both want 2; one GPU is free: it goes to one role, the other waits.
    assert d.add_prefill + d.add_decode == 1
    assert d.limited


def test_draining_workers_hold_their_gpus_and_the_plan() -> None:
    signals = pool(
        prefill("p0", 1.0), decode("d0", 0.1), decode("d1", 0.1, draining=True), ttft_p99_s=3.0
    )
    d = run(signals)
    assert d.action == "hold"
    assert "d1 still draining" in d.reason
    assert not d.changes


# ----- latency signals -----------------------------------------------------------


def test_ttft_counts_only_when_prefill_is_loaded() -> None:
    # Long prompts miss TTFT on an idle pool: more workers would not help.
    idle = run(pool(prefill("p0", 0.3), decode("d0", 0.8), ttft_p99_s=5.0))
    assert idle.pressure["prefill"] == pytest.approx(0.3 / 0.8)
    loaded = run(pool(prefill("p0", 0.75), decode("d0", 0.8), ttft_p99_s=5.0))
    assert loaded.pressure["prefill"] == pytest.approx(4.0)  # 5 s / 1 s, capped at 4


def test_tpot_counts_only_with_shared_batches() -> None:
    solo = run(pool(prefill("p0", 0.8), decode("d0", 0.2, running=1), tpot_p99_s=0.1))
    assert solo.pressure["decode"] == pytest.approx(0.25)
    shared = run(pool(prefill("p0", 0.8), decode("d0", 0.2, running=8), tpot_p99_s=0.1))
    assert shared.pressure["decode"] == pytest.approx(2.0)


def test_latency_of_too_few_requests_is_noise() -> None:
    signals = dataclasses.replace(
        pool(prefill("p0", 0.75), decode("d0", 0.8), ttft_p99_s=9.0), requests=5
    )
    assert run(signals).pressure["prefill"] == pytest.approx(0.75 / 0.8)


def test_decode_without_kv_or_tpot_falls_back_to_busy() -> None:
    w = WorkerSignal("d0", "decode", busy=0.4, running=1)
    assert run(pool(prefill("p0", 0.8), w)).pressure["decode"] == pytest.approx(0.5)


# ----- missing and noisy signals ---------------------------------------------------


def test_a_source_that_is_down_gives_degraded_and_no_decision() -> None:
    state = PlannerState((Recommendation(90.0, 1, 1),), last_change_at=50.0)
    signals = pool(prefill("p0", 1.0), decode("d0", 1.0), missing=("router-0 /metrics",))
    d = run(signals, state=state)
    assert d.action == "degraded"
    assert "router-0 /metrics" in d.reason
    assert not d.changes
    assert d.state == state  # nothing learned from a partial view


def test_first_scrape_without_rates_holds() -> None:
    d = run(pool(WorkerSignal("p0", "prefill", busy=None), decode("d0", 1.0)))
    assert d.action == "hold" and "p0" in d.reason and not d.changes


def test_starting_workers_count_but_do_not_vote() -> None:
    # A prefill worker still starting (not ready): counted, so nothing is added twice.
    signals = pool(
        prefill("p0", 1.0), WorkerSignal("p1", "prefill", ready=False), decode("d0", 0.8)
    )
    d = run(signals)
    assert (d.prefill, d.decode) == (2, 1)
    assert d.action == "none"


# ----- stabilization, cooldown, flapping -------------------------------------------


SLOW = dataclasses.replace(FAST, scale_up_window_s=30, scale_down_window_s=60, cooldown_s=20)
PROMPT_HEAVY = pool(
    prefill("p0", 1.0), prefill("p1", 1.0), decode("d0", 0.1), decode("d1", 0.1), ttft_p99_s=3.0
)
STEADY = pool(prefill("p0", 0.8), prefill("p1", 0.8), decode("d0", 0.8), decode("d1", 0.8))


def drive(policy: Policy, frames: list[tuple[float, PoolSignals]]) -> list[Decision]:
    state, out = PlannerState(), []
    for now, signals in frames:
        d = plan(policy, signals, state, now)
        out.append(d)
        state = d.state
    return out


def test_a_flip_waits_for_the_down_window_then_happens_once() -> None:
    decisions = drive(SLOW, [(t, PROMPT_HEAVY) for t in range(0, 70, 10)])
    actions = [d.action for d in decisions]
    # The donor side (decode shrinking) must be asked for a full 60 s window.
    assert actions[:6] == ["none"] * 6
    assert actions[6] == "flip"
    assert "not yet held for the stabilization window" in decisions[0].reason


def test_one_dissenting_sample_in_the_window_blocks_the_flip() -> None:
    frames = [(t, PROMPT_HEAVY) for t in range(0, 70, 10)]
    frames[3] = (30, STEADY)  # the mix looked balanced once within the window
    assert all(d.action == "none" for d in drive(SLOW, frames))


def test_cooldown_after_a_change() -> None:
    state = PlannerState((), last_change_at=95.0)
    d = run(PROMPT_HEAVY, dataclasses.replace(FAST, cooldown_s=20), state)
    assert d.action == "hold" and "cooldown" in d.reason


def test_no_flapping_on_steady_noisy_load() -> None:
    # Busy and KV jitter +-8% around target for ten minutes: no decision at all.
    jitter = [0.0, 0.08, -0.08, 0.05, -0.03, 0.07, -0.06, 0.02]
    frames = []
    for i in range(60):
        j = jitter[i % len(jitter)]
        frames.append(
            (i * 10.0, pool(prefill("p0", 0.8 + 0.8 * j), prefill("p1", 0.8 - 0.8 * j),
                            decode("d0", 0.8 - 0.8 * j), decode("d1", 0.8 + 0.8 * j)))
        )  # fmt: skip
    assert {d.action for d in drive(SLOW, frames)} == {"none"}


def test_follows_a_real_shift_and_settles() -> None:
    # Prompt-heavy for 2 minutes, then output-heavy: prefill grows first, decode later.
    output_heavy = pool(prefill("p0", 0.1), prefill("p1", 0.1), decode("d0", 1.0), decode("d1", 1.0),
                        tpot_p99_s=0.2)  # fmt: skip
    frames = [(float(t), PROMPT_HEAVY) for t in range(0, 120, 10)]
    frames += [(float(t), output_heavy) for t in range(120, 300, 10)]
    decisions = drive(SLOW, frames)
    flips = [(t, f) for (t, _), d in zip(frames, decisions, strict=True) for f in d.flips]
    assert flips[0][1].to_role == "prefill" and flips[0][0] < 120
    assert any(f.to_role == "decode" and t >= 120 for t, f in flips)


def test_history_keeps_only_the_longest_window() -> None:
    decisions = drive(SLOW, [(t, STEADY) for t in range(0, 200, 10)])
    kept = decisions[-1].state.recommendations
    # Inside the longest window, plus the last one before it (it shows the window is covered).
    assert [r.at for r in kept] == [120, 130, 140, 150, 160, 170, 180, 190]


# ----- the policy's own validation ---------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_busy": 0.0}, "target_busy"),
        ({"target_kv_usage": 1.5}, "target_kv_usage"),
        ({"ttft_slo_s": -1.0}, "ttft_slo_s"),
        ({"tolerance": 1.0}, "tolerance"),
        ({"cooldown_s": -1.0}, "cooldown_s"),
        ({"scale_down_fraction": 0.0}, "scale_down_fraction"),
        ({"max_gpus": 1}, "max_gpus (1) must cover the minimums (2 GPUs)"),
    ],
)
def test_policy_rejects_bad_knobs(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Policy(**kwargs)  # type: ignore[arg-type]


def test_role_bounds_reject_max_below_min() -> None:
    with pytest.raises(ValueError, match="max_replicas"):
        RoleBounds(min_replicas=3, max_replicas=2)


def test_flips_and_removals_share_one_shrink_step() -> None:
    # Budget full (8 of 8); prefill wants 6, decode 2. One shrink step of decode (25% of
    # 4 = 1) per decision: one flip, no removal on top, and no new worker without a GPU.
    p = dataclasses.replace(
        FAST, max_gpus=8, prefill=RoleBounds(1, 6), decode=RoleBounds(1, 6), ttft_slo_s=2.0
    )
    signals = pool(
        *(prefill(f"p{i}", 0.98) for i in range(4)),
        *(decode(f"d{i}", 0.2, running=12) for i in range(4)),
        ttft_p99_s=3.1,
    )
    d = run(signals, p)
    assert d.action == "flip"
    assert len(d.flips) == 1 and d.remove == () and d.add_prefill == 0
    assert (d.prefill, d.decode) == (5, 3)


def test_a_prefill_backlog_parked_on_decode_is_not_decode_demand() -> None:
    # Prompts queued on the prefill side hold reservations on the decode workers: 90% of
    # their blocks, but only 10% are their own streams'. Prefill must get the capacity.
    def parked(name: str) -> WorkerSignal:
        return WorkerSignal(name, "decode", busy=0.4, running=2, kv_blocks_used=900,
                            kv_blocks_total=1000, kv_blocks_reserved=800)  # fmt: skip

    d = run(
        pool(prefill("p0", 1.0), prefill("p1", 1.0), parked("d0"), parked("d1"), ttft_p99_s=3.0)
    )
    assert d.pressure["decode"] == pytest.approx(0.1 / 0.8)
    assert d.action == "flip" and d.flips[0].to_role == "prefill"


# ----- a pool that keeps its workers (hold_budget) ---------------------------------

HOLD = dataclasses.replace(FAST, hold_budget=True, max_gpus=8)


def test_held_pool_moves_idle_capacity_to_the_warm_role_by_flips() -> None:
    # 4 + 4 workers, prefill warm (TTFT p99 1.3 s over a 1 s SLO at busy 0.5), decode cold:
    # a free pool would remove decode workers; a held one flips them, one step at a time.
    signals = pool(
        *(prefill(f"p{i}", 0.5) for i in range(4)),
        *(decode(f"d{i}", 0.05, running=2) for i in range(4)),
        ttft_p99_s=1.3,
    )
    d = run(signals, HOLD)
    assert d.action == "flip" and d.remove == () and d.add_prefill == d.add_decode == 0
    assert [f.to_role for f in d.flips] == ["prefill"]
    assert (d.prefill, d.decode) == (5, 3)
    # The same signals in a pool free to grow: a flip and a new prefill worker (4 -> 6).
    free = run(signals, dataclasses.replace(HOLD, hold_budget=False, max_gpus=None))
    assert len(free.flips) == 1 and free.add_prefill == 1 and free.prefill == 6


def test_held_pool_leaves_a_cool_pool_alone() -> None:
    signals = pool(
        *(prefill(f"p{i}", 0.3) for i in range(4)), *(decode(f"d{i}", 0.05) for i in range(4))
    )
    d = run(signals, HOLD)
    assert d.action == "none" and not d.changes


def test_held_pool_does_not_move_when_both_roles_are_equally_hot() -> None:
    signals = pool(
        *(prefill(f"p{i}", 1.0) for i in range(4)), *(decode(f"d{i}", 1.0) for i in range(4))
    )
    assert not run(signals, HOLD).changes


@pytest.mark.parametrize(("busy", "counted"), [(0.35, False), (0.45, True)])
def test_ttft_counts_from_ttft_min_busy(busy: float, counted: bool) -> None:
    d = run(pool(prefill("p0", busy), decode("d0", 0.8), ttft_p99_s=3.0))
    assert (d.pressure["prefill"] == pytest.approx(3.0)) is counted


def test_decode_kv_usage_is_pooled_over_unequal_caches() -> None:
    # 200 of 256 blocks on an old worker, 200 of 4096 on a new one: 400 / 4352 of the
    # role's blocks are in use, not the mean of 78% and 5%.
    small = WorkerSignal(
        "d0", "decode", busy=0.5, running=4, kv_blocks_used=200, kv_blocks_total=256
    )
    large = WorkerSignal(
        "d1", "decode", busy=0.5, running=4, kv_blocks_used=200, kv_blocks_total=4096
    )
    d = run(pool(prefill("p0", 0.8), small, large))
    assert d.pressure["decode"] == pytest.approx((400 / 4352) / 0.8, abs=1e-4)
