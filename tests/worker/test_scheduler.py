"""Scheduler decisions with exact block ids: budgets, chunked prefill,
prefix hits and preemption by recompute."""

from __future__ import annotations

from tandem.sampling import SamplingParams
from tandem.worker.block_pool import BlockPool
from tandem.worker.request import Request, Status
from tandem.worker.scheduler import Policy, Scheduler, SchedulerConfig

P = SamplingParams(max_tokens=8, temperature=0.0)


def make(
    num_blocks: int = 8, block_size: int = 4, budget: int = 64, max_seqs: int = 8
) -> Scheduler:
    return Scheduler(SchedulerConfig(budget, max_seqs), BlockPool(num_blocks, block_size))


def req(rid: str, n: int, arrival: int, base: int = 0) -> Request:
    return Request(rid, [base + i for i in range(n)], P, arrival)


def run_step(
    s: Scheduler, sampled_token: int = 7
) -> list[tuple[str, tuple[int, ...], int, tuple[int, ...], bool]]:
    out = s.schedule()
    view = [(q.request_id, q.token_ids, q.start_pos, q.block_ids, q.sample) for q in out.seqs]
    s.update({q.request_id: sampled_token for q in out.seqs if q.sample})
    return view


def test_prefill_then_decode_with_exact_blocks() -> None:
    s = make()
    s.add(req("a", 6, 1))
    assert run_step(s) == [("a", (0, 1, 2, 3, 4, 5), 0, (0, 1), True)]
    assert s.requests["a"].output_token_ids == [7]
    # Decode: one token at position 6, same blocks.
    assert run_step(s, 8) == [("a", (7,), 6, (0, 1), True)]
    # Position 8 needs a third block.
    assert run_step(s, 9) == [("a", (8,), 7, (0, 1), True)]
    assert run_step(s) == [("a", (9,), 8, (0, 1, 2), True)]


def test_chunked_prefill_respects_the_token_budget() -> None:
    s = make(budget=4)
    s.add(req("a", 10, 1))
    assert run_step(s) == [("a", (0, 1, 2, 3), 0, (0,), False)]
    assert run_step(s) == [("a", (4, 5, 6, 7), 4, (0, 1), False)]
    assert run_step(s) == [("a", (8, 9), 8, (0, 1, 2), True)]


def test_running_decode_goes_before_new_prefill_chunk() -> None:
    s = make(budget=4)
    s.add(req("a", 3, 1))
    run_step(s)
    s.add(req("b", 8, 2, base=100))
    # a decodes 1 token, b gets the remaining budget of 3 tokens.
    assert run_step(s) == [("a", (7,), 3, (0,), True), ("b", (100, 101, 102), 0, (1,), False)]


def test_prefix_hit_skips_cached_full_blocks_but_keeps_one_token() -> None:
    s = make()
    s.add(req("a", 8, 1))
    run_step(s)
    s.finish(s.requests["a"], "stop")
    # Same 8-token prompt: both blocks cached, but the last token must be
    # recomputed for logits, so only block 0 is reused.
    s.add(req("b", 8, 2))
    assert run_step(s) == [("b", (4, 5, 6, 7), 4, (0, 2), True)]
    assert s.requests["b"].num_cached_tokens == 4


def test_preemption_by_recompute_frees_the_latest_request() -> None:
    s = make(num_blocks=4, block_size=2, budget=64)
    s.add(req("a", 3, 1))
    s.add(req("b", 3, 2, base=50))
    assert run_step(s) == [("a", (0, 1, 2), 0, (0, 1), True), ("b", (50, 51, 52), 0, (2, 3), True)]
    # Position 3 still fits in each request's second block.
    assert [v[2] for v in run_step(s)] == [3, 3]
    # a's next token (position 4) needs a new block: none free, b is preempted.
    out = s.schedule()
    assert out.preempted == ("b",)
    assert [(q.request_id, q.start_pos, q.block_ids) for q in out.seqs] == [("a", 4, (0, 1, 3))]
    b = s.requests["b"]
    assert b.status is Status.WAITING and b.block_ids == [] and b.num_computed_tokens == 0
    assert b.output_token_ids == [7, 7]  # kept: recompute includes them, nothing is lost
    assert s.waiting[0] is b


def test_waiting_request_waits_when_blocks_run_out() -> None:
    s = make(num_blocks=2, block_size=2)
    s.add(req("a", 4, 1))
    s.add(req("b", 2, 2))
    assert [v[0] for v in run_step(s)] == ["a"]
    assert list(s.waiting) == [s.requests["b"]]


def test_max_num_seqs_caps_the_running_batch() -> None:
    s = make(max_seqs=2)
    for i in range(3):
        s.add(req(f"r{i}", 2, i, base=10 * i))
    assert [v[0] for v in run_step(s)] == ["r0", "r1"]


def test_abort_frees_blocks() -> None:
    s = make()
    s.add(req("a", 6, 1))
    run_step(s)
    assert s.pool.num_used == 2
    s.abort("a")
    assert s.pool.num_used == 0 and not s.has_work()


# ----- traffic control: priorities, deadlines, aging ----------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_at(clock: Clock, policy: Policy = "priority", aging_s: float = 30.0, **kw: int) -> Scheduler:
    cfg = SchedulerConfig(kw.get("budget", 64), kw.get("max_seqs", 8), policy=policy, aging_s=aging_s)
    return Scheduler(cfg, BlockPool(kw.get("num_blocks", 8), kw.get("block_size", 4)), clock=clock)


def preq(
    rid: str, n: int, arrival: int, priority: int = 0, deadline: float = float("inf"), base: int = 0
) -> Request:
    r = req(rid, n, arrival, base)
    r.priority, r.deadline = priority, deadline
    return r


def test_waiting_requests_run_by_priority_then_deadline_then_arrival() -> None:
    s = make_at(Clock(), budget=4, num_blocks=16)
    s.add(preq("batch", 2, 1, priority=10, base=10))
    s.add(preq("late", 2, 2, priority=100, deadline=9.0, base=20))
    s.add(preq("soon", 2, 3, priority=100, deadline=5.0, base=30))
    s.add(preq("first", 2, 4, priority=100, deadline=5.0, base=40))
    s.add(preq("batch2", 2, 5, priority=10, base=50))
    # Budget 4 = two 2-token prompts per step: the two with the earliest deadline,
    # the later of them ("first") losing the tie on arrival to "soon".
    assert run_step(s) == [("soon", (30, 31), 0, (0,), True), ("first", (40, 41), 0, (1,), True)]
    assert [r.request_id for r in s.waiting] == ["late", "batch", "batch2"]


def test_fcfs_policy_ignores_priority() -> None:
    s = make_at(Clock(), policy="fcfs", budget=2, num_blocks=16)
    s.add(preq("batch", 2, 1, priority=10))
    s.add(preq("urgent", 2, 2, priority=100, base=20))
    assert [v[0] for v in run_step(s)] == ["batch"]


def test_running_low_priority_prefill_yields_its_chunk_to_an_urgent_arrival() -> None:
    s = make_at(Clock(), budget=4, num_blocks=16)
    s.add(preq("batch", 12, 1, priority=10))
    assert run_step(s) == [("batch", (0, 1, 2, 3), 0, (0,), False)]
    s.add(preq("chat", 3, 2, priority=100, base=100))
    # The urgent prompt takes the chunk first; batch keeps its block and gets what is left.
    assert run_step(s) == [
        ("chat", (100, 101, 102), 0, (1,), True),
        ("batch", (4,), 4, (0, 2), False),
    ]
    # Next step chat decodes (one row) and batch continues with the rest of the budget.
    assert run_step(s) == [("chat", (7,), 3, (1,), True), ("batch", (5, 6, 7), 5, (0, 2), False)]
    assert s.requests["batch"].num_preemptions == 0


def test_preemption_evicts_the_lowest_priority_even_if_it_arrived_first() -> None:
    s = make_at(Clock(), num_blocks=4, block_size=2)
    s.add(preq("low", 3, 1, priority=1))
    s.add(preq("high", 3, 2, priority=5, base=50))
    # high is scheduled first (priority), so it gets blocks 0, 1.
    assert run_step(s) == [
        ("high", (50, 51, 52), 0, (0, 1), True),
        ("low", (0, 1, 2), 0, (2, 3), True),
    ]
    run_step(s)  # position 3 fits in each second block
    out = s.schedule()
    # high needs a block for position 4: the low-priority request gives its blocks back.
    assert out.preempted == ("low",)
    assert [(q.request_id, q.start_pos, q.block_ids) for q in out.seqs] == [("high", 4, (0, 1, 3))]
    low = s.requests["low"]
    assert low.status is Status.WAITING and low.block_ids == [] and low.output_token_ids == [7, 7]


def test_preemption_among_equal_priorities_evicts_the_latest() -> None:
    s = make_at(Clock(), num_blocks=6, block_size=2)
    for i, rid in enumerate(("a", "b", "c")):
        s.add(preq(rid, 3, i + 1, priority=1, base=10 * i))
    assert [v[3] for v in run_step(s)] == [(0, 1), (2, 3), (4, 5)]
    run_step(s)
    out = s.schedule()
    # a needs a block and none is free: c (the latest) gives back 4 and 5, which
    # then serve a and b (5, uncached, is handed out before 4, which keeps c's
    # full-block hash); c waits with nothing held.
    assert out.preempted == ("c",)
    assert [(q.request_id, q.block_ids) for q in out.seqs] == [("a", (0, 1, 5)), ("b", (2, 3, 4))]
    assert [r.request_id for r in s.waiting] == ["c"] and s.requests["c"].block_ids == []


def test_aging_bounds_starvation() -> None:
    clock = Clock()
    s = make_at(clock, aging_s=10.0, budget=2, num_blocks=32)
    s.add(preq("batch", 2, 1, priority=1))
    for t in range(12):
        clock.now = float(t)
        s.add(preq(f"chat{t}", 2, 10 + t, priority=100, base=100 + t))
        ran = [v[0] for v in run_step(s)]
        for r in list(s.running):  # the urgent ones finish at their first token
            if r.request_id.startswith("chat"):
                s.finish(r, "stop")
        if t < 10:
            # Younger than the bound: every fresh urgent arrival overtakes it.
            assert ran == [f"chat{t}"], (t, ran)
        else:
            # Aged at t=10 exactly: it runs before the urgent arrival of that step.
            assert ran == ["batch"], (t, ran)
            break
    assert clock.now == 10.0


def test_aged_request_is_not_preempted_before_younger_urgent_ones() -> None:
    clock = Clock()
    s = make_at(clock, aging_s=5.0, num_blocks=4, block_size=2)
    s.add(preq("old", 3, 1, priority=1))
    clock.now = 4.0
    s.add(preq("new", 3, 2, priority=9, base=50))
    run_step(s)
    run_step(s)
    clock.now = 6.0  # old has been in the engine 6 s > 5 s, new only 2 s
    out = s.schedule()
    assert out.preempted == ("new",)
    assert [q.request_id for q in out.seqs] == ["old"]


def test_scheduler_config_rejects_bad_knobs() -> None:
    import pytest

    with pytest.raises(ValueError, match="policy"):
        SchedulerConfig(policy="lifo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="aging_s"):
        SchedulerConfig(aging_s=0)
