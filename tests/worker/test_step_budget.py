"""Step composition: the prefill share of a step under a TPOT SLO, and the
online step-time model it reads."""

from __future__ import annotations

import pytest

from tandem.sampling import SamplingParams
from tandem.worker.block_pool import BlockPool
from tandem.worker.request import Request
from tandem.worker.scheduler import Scheduler, SchedulerConfig
from tandem.worker.step_budget import MIN_SAMPLES, Split, StepCost, StepPolicy, extra_rows, split


def fitted(base: float, row: float, tok: float) -> StepCost:
    """A model fed exact steps of a device with these figures."""
    cost = StepCost()
    for rows, tokens in [(1, 0), (8, 0), (4, 256), (2, 1024), (16, 64), (0, 512)]:
        cost = cost.learn(rows, tokens, base + row * rows + tok * tokens)
    return cost


def test_the_model_recovers_the_figures_it_was_fed() -> None:
    base, row, tok = fitted(0.004, 0.0005, 0.00002).coefficients()
    assert base == pytest.approx(0.004, rel=1e-3)
    assert row == pytest.approx(0.0005, rel=1e-3)
    assert tok == pytest.approx(0.00002, rel=1e-3)


def test_the_model_follows_a_device_that_slows_down() -> None:
    cost = fitted(0.004, 0.0005, 0.00002)
    for _ in range(300):  # e.g. another tenant on the GPU: every figure doubles
        for rows, tokens in [(2, 0), (4, 512), (8, 128), (1, 1024)]:
            cost = cost.learn(rows, tokens, 2 * (0.004 + 0.0005 * rows + 0.00002 * tokens))
    assert cost.coefficients()[2] == pytest.approx(0.00004, rel=0.02)


def test_steps_that_computed_nothing_teach_nothing() -> None:
    cost = StepCost().learn(0, 0, 0.5).learn(3, 0, 0.0).learn(3, 0, float("nan"))
    assert cost.samples == 0 and cost.coefficients() == (0.0, 0.0, 0.0)


# figures: 4 ms per step + 0.5 ms per decode row + 20 us per prefill token
COST = fitted(0.004, 0.0005, 0.00002)


@pytest.mark.parametrize(
    ("policy", "cost", "rows", "budget", "expected"),
    [
        # No SLO: prefill gets everything the decodes leave.
        (StepPolicy(None), COST, 8, 2048, Split(8, 2040, "budget")),
        # No running decodes: nothing to protect.
        (StepPolicy(0.02), COST, 0, 2048, Split(0, 2048, "budget")),
        # Not fitted yet: no figures to act on.
        (StepPolicy(0.02), StepCost(), 8, 2048, Split(8, 2040, "budget")),
        # 20 ms SLO, 8 rows: 4 + 4 = 8 ms for decodes, 12 ms left / 20 us = 600 tokens.
        (StepPolicy(0.02), COST, 8, 2048, Split(8, 600, "slo")),
        # A looser SLO that the whole budget fits in.
        (StepPolicy(0.1), COST, 8, 2048, Split(8, 2040, "budget")),
        # 28 rows: 4 + 14 = 18 ms, 2 ms left = 100 tokens, above the floor of 64.
        (StepPolicy(0.02, min_prefill_tokens=64), COST, 28, 2048, Split(28, 100, "slo")),
        # 30 rows + the floor of 64 tokens: 4 + 15 + 1.28 > 20 ms: 29 rows fit next to the floor.
        (StepPolicy(0.02, min_prefill_tokens=64), COST, 30, 2048, Split(29, 64, "rows")),
        # 64 rows (36 ms) are far over: (20 - 4 - 0.64) / 0.5 = 30 rows are kept.
        (StepPolicy(0.02, min_prefill_tokens=32), COST, 64, 2048, Split(30, 32, "rows")),
        # Not even one row meets a 4.5 ms SLO (4 + 0.5 + 0.64 ms): nothing to protect, no cap.
        (StepPolicy(0.0045, min_prefill_tokens=32), COST, 64, 2048, Split(64, 1984, "infeasible")),
        # More decode rows than the budget (no SLO): the budget caps the rows, nothing left.
        (StepPolicy(None), COST, 3000, 2048, Split(2048, 0, "budget")),
    ],
)
def test_split(policy: StepPolicy, cost: StepCost, rows: int, budget: int, expected: Split) -> None:
    assert split(policy, cost, rows, budget) == expected


def test_without_prefill_waiting_no_room_is_kept_for_it() -> None:
    # 64 rows as above, but nothing to prefill: (20 - 4) / 0.5 = 32 rows fit.
    assert split(
        StepPolicy(0.02, min_prefill_tokens=32), COST, 64, 2048, prefill_pending=0
    ) == Split(32, 0, "rows")


def test_policy_rejects_bad_knobs() -> None:
    with pytest.raises(ValueError, match="tpot_slo_s"):
        StepPolicy(0)
    with pytest.raises(ValueError, match="min_prefill_tokens"):
        StepPolicy(0.05, 0)


def test_scheduler_caps_the_prefill_chunk_next_to_decodes_by_the_slo() -> None:
    cfg = SchedulerConfig(2048, 8, step=StepPolicy(tpot_slo_s=0.02, min_prefill_tokens=4))
    s = Scheduler(cfg, BlockPool(64, 16), clock=lambda: 0.0)
    s.cost = COST
    p = SamplingParams(max_tokens=8, temperature=0.0)
    s.add(Request("chat", [1, 2, 3], p, 1))
    s.update({q.request_id: 5 for q in s.schedule().seqs if q.sample})
    s.add(Request("long", list(range(900)), p, 2))
    out = s.schedule()
    # One decode row: 4.5 ms predicted, 15.5 ms left / 20 us = 775 prefill tokens.
    assert [(q.request_id, len(q.token_ids)) for q in out.seqs] == [("chat", 1), ("long", 775)]
    assert COST.samples >= MIN_SAMPLES


def test_scheduler_keeps_the_most_urgent_decodes_when_the_slo_holds_only_some() -> None:
    # 4 ms + 0.5 ms per row: a 5.2 ms SLO holds two rows; the least urgent decode waits.
    cfg = SchedulerConfig(2048, 8, step=StepPolicy(tpot_slo_s=0.0052, min_prefill_tokens=4))
    s = Scheduler(cfg, BlockPool(64, 16), clock=lambda: 0.0)
    s.cost = COST
    p = SamplingParams(max_tokens=8, temperature=0.0)
    for rid, prio, arrival in (("low", 1, 1), ("high", 9, 2), ("mid", 5, 3)):
        r = Request(rid, [arrival, 2, 3], p, arrival)
        r.priority = prio
        s.add(r)
    # The three prompts, most urgent first (blocks 0, 1, 2).
    s.update({q.request_id: 5 for q in s.schedule().seqs if q.sample})
    out = s.schedule()
    assert [(q.request_id, q.start_pos, q.block_ids) for q in out.seqs] == [
        ("high", 3, (0,)),
        ("mid", 3, (1,)),
    ]
    # low keeps its block and its place: it waits, it is not preempted.
    assert s.requests["low"].num_preemptions == 0 and s.requests["low"].block_ids == [2]


def test_an_urgent_prompt_goes_before_less_urgent_decodes_under_the_slo() -> None:
    # 5.2 ms SLO: the two batch decodes fit alone (4 + 1 ms), but next to the urgent
    # 40-token prompt (4 + 0.8 ms) not even one does: they wait this step.
    cfg = SchedulerConfig(2048, 8, step=StepPolicy(tpot_slo_s=0.0052, min_prefill_tokens=4))
    s = Scheduler(cfg, BlockPool(64, 16), clock=lambda: 0.0)
    s.cost = COST
    p = SamplingParams(max_tokens=8, temperature=0.0)
    for rid, arrival in (("batch0", 1), ("batch1", 2)):
        r = Request(rid, [arrival, 2, 3], p, arrival)
        r.priority = 1
        s.add(r)
    s.update({q.request_id: 5 for q in s.schedule().seqs if q.sample})
    alone = split(cfg.step, COST, 2, 2048)
    assert (alone.decode_rows, alone.limited_by) == (2, "slo")  # alone, both rows would run
    chat = Request("chat", list(range(100, 140)), p, 3)
    chat.priority = 9
    s.add(chat)
    out = s.schedule()
    assert [(q.request_id, len(q.token_ids), q.block_ids) for q in out.seqs] == [
        ("chat", 40, (2, 3, 4))
    ]


@pytest.mark.parametrize(
    ("policy", "rows", "tokens", "left", "expected"),
    [
        (StepPolicy(None), 0, 500, 100, 100),  # no SLO: what the budget leaves
        (StepPolicy(0.02), 4, 0, 100, 28),  # 4 + 2 ms used, 14 ms left / 0.5 ms per row
        (StepPolicy(0.02), 4, 600, 100, 4),  # 4 + 2 + 12 ms: 2 ms left, 4 rows
        (StepPolicy(0.02), 4, 0, 10, 10),  # the budget caps them
        (StepPolicy(0.02), 4, 800, 100, 0),  # 4 + 2 + 16 > 20 ms: none
        (StepPolicy(0.004), 0, 10, 100, 100),  # 4.5 ms for one row alone > 4 ms: nothing to protect
    ],
)
def test_extra_rows(policy: StepPolicy, rows: int, tokens: int, left: int, expected: int) -> None:
    share = split(policy, COST, rows, 2048)
    assert extra_rows(policy, COST, share, rows, tokens, left) == expected
