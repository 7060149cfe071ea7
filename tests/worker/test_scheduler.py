"""Scheduler decisions with exact block ids: budgets, chunked prefill,
prefix hits and preemption by recompute."""

from __future__ import annotations

from tandem.sampling import SamplingParams
from tandem.worker.block_pool import BlockPool
from tandem.worker.request import Request, Status
from tandem.worker.scheduler import Scheduler, SchedulerConfig

P = SamplingParams(max_tokens=8, temperature=0.0)


def make(num_blocks: int = 8, block_size: int = 4, budget: int = 64, max_seqs: int = 8) -> Scheduler:
    return Scheduler(SchedulerConfig(budget, max_seqs), BlockPool(num_blocks, block_size))


def req(rid: str, n: int, arrival: int, base: int = 0) -> Request:
    return Request(rid, [base + i for i in range(n)], P, arrival)


def run_step(s: Scheduler, sampled_token: int = 7) -> list[tuple[str, tuple[int, ...], int, tuple[int, ...], bool]]:
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
