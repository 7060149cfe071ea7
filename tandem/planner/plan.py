"""`plan(policy, signals, state, now) -> Decision`: the redistribution planner.

Pure: no I/O, no clock (`now` is given, in seconds on any monotonic scale), no
randomness. Steps:

1. Pressure per role, 1.0 meaning "at target" (`demand.py`).
2. Size each role like the HPA: ceil(current x pressure) unless within the
   tolerance, bounded by min/max replicas and a step limit.
3. Fit the GPU budget: over `max_gpus`, split the budget between the roles so
   that the worse-served role is served as well as possible, and move only if
   that improves the bottleneck by more than the tolerance (hysteresis).
4. Stabilize: a role grows only to the least of the recommendations of its
   up-window and shrinks only to the largest of its down-window, so a flip
   (one role shrinks, the other grows) needs both windows to agree.
5. Carry out: while the budget is fixed, shrink-and-grow pairs become flips of
   the least-loaded flexible workers (no reload); other shrinks are removals
   (drain, then delete), other growth is new workers. Nothing new is decided
   while a worker drains, or within the cooldown after the last change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tandem.planner.decision import Action, Decision, Flip, PlannerState, Recommendation
from tandem.planner.demand import demand, live_workers
from tandem.planner.policy import Policy
from tandem.planner.signals import ROLES, PoolSignals, WorkerSignal


def plan(policy: Policy, signals: PoolSignals, state: PlannerState, now: float) -> Decision:
    live = {r: live_workers(signals.workers, r) for r in ROLES}
    cur = {r: len(live[r]) for r in ROLES}
    if signals.missing:
        reason = "signal source down: " + ", ".join(signals.missing) + "; no scaling decision"
        return _unchanged("degraded", reason, cur, state)
    unknown = [w.name for r in ROLES for w in live[r] if w.ready and w.busy is None]
    if unknown:
        reason = f"no busy fraction yet for {', '.join(unknown)}; waiting for a second scrape"
        return _unchanged("hold", reason, cur, state)
    roles = demand(policy, signals)
    pressure, ready = roles, {r: roles[r].ready for r in ROLES}
    asked = {r: _size(policy, r, cur[r], ready[r], pressure[r].value) for r in ROLES}
    sized = {r: policy.bounds(r).clamp(asked[r]) for r in ROLES}
    need = {r: roles[r].need for r in ROLES}
    fitted, limited = _fit(policy, signals, cur, sized, need)
    limited = limited or _max_limited(policy, asked)
    history = _keep(state.recommendations, now - policy.history_s)
    history += (Recommendation(now, fitted["prefill"], fitted["decode"]),)
    kept = PlannerState(history, state.last_change_at)
    target = {r: _stabilize(policy, cur[r], history, r, now) for r in ROLES}
    said = "; ".join(f"{r} {pressure[r].value:.2f} ({pressure[r].why})" for r in ROLES)
    values = {r: round(pressure[r].value, 4) for r in ROLES}

    def unchanged(action: Action, what: str) -> Decision:
        return Decision(
            action, f"{what}; pressure {said}", cur["prefill"], cur["decode"],
            limited=limited, pressure=values, state=kept,
        )  # fmt: skip

    if target == cur:
        return unchanged("none", _why_none(cur, fitted))
    draining = [w.name for w in signals.workers if w.draining]
    if draining:
        return unchanged("hold", f"{', '.join(draining)} still draining")
    if state.last_change_at is not None and now - state.last_change_at < policy.cooldown_s:
        left = policy.cooldown_s - (now - state.last_change_at)
        return unchanged("hold", f"cooldown: {left:.0f}s left since the last change")
    flips, removed, add = _moves(policy, live, cur, target, _budget(policy, signals))
    remove = tuple(name for r in ROLES for name in removed[r])
    after = _after(cur, flips, {r: len(removed[r]) for r in ROLES}, add)
    if after == cur:
        if all(target[r] >= cur[r] for r in ROLES):
            asks = _why_none(cur, fitted)
            return unchanged("none", f"{asks}; growth waits for a free GPU")
        return unchanged("hold", "no flexible worker or free GPU for the move")
    return Decision(
        "flip" if flips and not (remove or any(add.values())) else "scale",
        f"{_describe(cur, after, flips, remove)}; pressure {said}",
        after["prefill"],
        after["decode"],
        flips=flips,
        remove=remove,
        add_prefill=add["prefill"],
        add_decode=add["decode"],
        limited=limited,
        pressure=values,
        state=PlannerState(history, now),
    )


def _after(
    cur: dict[str, int],
    flips: tuple[Flip, ...],
    removed: dict[str, int],
    add: dict[str, int],
) -> dict[str, int]:
    out = dict(cur)
    for f in flips:
        out[_role_of(f.from_role)] -= 1
        out[_role_of(f.to_role)] += 1
    return {r: out[r] - removed[r] + add[r] for r in ROLES}


def _unchanged(action: Action, reason: str, cur: dict[str, int], state: PlannerState) -> Decision:
    return Decision(action, reason, cur["prefill"], cur["decode"], state=state)


def _size(policy: Policy, role: str, cur: int, ready: int, pressure: float) -> int:
    """HPA's rule on the workers that report (starting ones are counted, not voting)."""
    if ready == 0:
        # No workers, or none ready yet: nothing measured, keep what exists (or the floor).
        return max(cur, policy.bounds(role).min_replicas)
    in_band = abs(pressure - 1.0) <= policy.tolerance
    desired = cur if in_band else math.ceil(ready * pressure - 1e-9)
    desired = min(desired, policy.up_limit(cur))
    return max(desired, cur - policy.down_step(cur), 0)


def _budget(policy: Policy, s: PoolSignals) -> int | None:
    """GPUs the live roles may hold: draining workers still hold theirs."""
    if policy.max_gpus is None:
        return None
    held = sum(policy.bounds(_role_of(w.role)).gpus_per_replica for w in s.workers if w.draining)
    return policy.max_gpus - held


def _role_of(role: str) -> str:
    return "prefill" if role == "prefill" else "decode"


def _fit(
    policy: Policy,
    s: PoolSignals,
    cur: dict[str, int],
    sized: dict[str, int],
    need: dict[str, float],
) -> tuple[dict[str, int], str]:
    budget = _budget(policy, s)
    if policy.hold_budget and policy.role_switching:
        return _rebalance(policy, cur, need), ""
    p, d = sized["prefill"], sized["decode"]
    if budget is None or policy.gpus(p, d) <= budget:
        return dict(sized), ""
    limited = f"maxGPUs={policy.max_gpus} binds: the signals ask for {p} prefill + {d} decode"
    grown = _grow_within(policy, cur, sized, need, budget)
    if not policy.role_switching:
        return grown, limited
    best = _best_split(policy, budget, sized, need)
    if _score(best, need) <= _score(grown, need) * (1 + policy.tolerance):
        return grown, limited  # hysteresis: a flip must serve the bottleneck clearly better
    return best, limited


def _rebalance(policy: Policy, cur: dict[str, int], need: dict[str, float]) -> dict[str, int]:
    """A pool that keeps its workers: the split of the same workers that serves the
    worse-served role best, once the busier role is warm; moving only when that serves
    the bottleneck clearly better (hysteresis)."""
    hot = max((need[r] / cur[r]) if cur[r] else 0.0 for r in ROLES)
    if hot < policy.rebalance_above or not all(cur.values()):
        return dict(cur)
    total = sum(cur.values())
    top = {r: min(total, policy.bounds(r).max_replicas or total) for r in ROLES}
    best = _best_split(policy, policy.gpus(cur["prefill"], cur["decode"]), top, need)
    if _score(best, need) <= _score(cur, need) * (1 + policy.tolerance):
        return dict(cur)
    return best


def _score(split: dict[str, int], need: dict[str, float]) -> float:
    """How well the worse-served role is served: min over roles of workers / need."""
    return min((split[r] / need[r]) if need[r] > 0 else math.inf for r in ROLES)


def best_split(policy: Policy, budget: int, need: dict[str, float]) -> dict[str, int]:
    """The split of `budget` GPUs that serves the worse-served role best (within the
    roles' min/max): what the planner moves towards when the budget binds."""
    top = {r: policy.bounds(r).max_replicas or budget for r in ROLES}
    return _best_split(policy, budget, top, need)


def _best_split(
    policy: Policy, budget: int, sized: dict[str, int], need: dict[str, float]
) -> dict[str, int]:
    gp, gd = policy.prefill.gpus_per_replica, policy.decode.gpus_per_replica
    lo, hi = policy.prefill.min_replicas, sized["prefill"]
    best: dict[str, int] | None = None
    for p in range(lo, hi + 1):
        left = budget - p * gp
        if left < 0:
            break
        d = min(sized["decode"], left // gd if gd else sized["decode"])
        if d < policy.decode.min_replicas:
            break
        split = {"prefill": p, "decode": d}
        if best is None or _score(split, need) > _score(best, need):
            best = split
    assert best is not None, "the policy guarantees the minimums fit the budget"
    return best


def _within(policy: Policy, cur: dict[str, int], budget: int) -> dict[str, int]:
    """The current split, trimmed to the budget (the larger role gives first)."""
    split = {r: policy.bounds(r).clamp(cur[r]) for r in ROLES}
    while policy.gpus(split["prefill"], split["decode"]) > budget:
        r = max(ROLES, key=lambda r: split[r] - policy.bounds(r).min_replicas)
        split[r] -= 1
    return split


def _grow_within(
    policy: Policy,
    cur: dict[str, int],
    sized: dict[str, int],
    need: dict[str, float],
    budget: int,
) -> dict[str, int]:
    """Without role switching: shrink where asked, then grow the neediest role in budget."""
    split = {r: min(cur[r], sized[r]) for r in ROLES}
    split = _within(policy, split, budget)
    while True:
        room = [
            r for r in ROLES
            if split[r] < sized[r]
            and policy.gpus(split["prefill"] + (r == "prefill"), split["decode"] + (r == "decode"))
            <= budget
        ]  # fmt: skip
        if not room:
            return split
        r = min(room, key=lambda r: (split[r] / need[r]) if need[r] > 0 else math.inf)
        split[r] += 1


def _max_limited(policy: Policy, asked: dict[str, int]) -> str:
    for r in ROLES:
        hi = policy.bounds(r).max_replicas
        if hi is not None and asked[r] > hi:
            return f"{r} held at maxReplicas={hi}: the signals ask for {asked[r]}"
    return ""


def _keep(history: tuple[Recommendation, ...], horizon: float) -> tuple[Recommendation, ...]:
    """The recommendations inside the horizon, and the last one before it: that one
    shows the longest window was watched from its start."""
    older = [r for r in history if r.at < horizon]
    return tuple(older[-1:]) + tuple(r for r in history if r.at >= horizon)


def _stabilize(
    policy: Policy, cur: int, history: tuple[Recommendation, ...], role: str, now: float
) -> int:
    """Grow to the least, shrink to the largest recommendation of the window. A window
    not yet watched in full (start-up, an operator restart) counts the current size
    as one of its recommendations, so nothing moves on a first impression."""

    def values(window: float) -> list[int]:
        got = [getattr(r, role) for r in history if r.at >= now - window]
        covered = any(r.at <= now - window for r in history)
        return got if covered else [*got, cur]

    up = min(values(policy.scale_up_window_s))
    down = max(values(policy.scale_down_window_s))
    if up > cur:
        return up
    if down < cur:
        return down
    return cur


def _why_none(cur: dict[str, int], fitted: dict[str, int]) -> str:
    if fitted == cur:
        return "pool at its target"
    asks = ", ".join(f"{r} {cur[r]}->{fitted[r]}" for r in ROLES if fitted[r] != cur[r])
    return f"signals ask {asks}, not yet held for the stabilization window"


def _least_loaded(workers: Sequence[WorkerSignal]) -> list[WorkerSignal]:
    return sorted(
        workers,
        key=lambda w: (
            not w.flexible,
            w.running + w.waiting,
            w.busy or 0.0,
            w.kv_blocks_used,
            w.name,
        ),
    )


def _moves(
    policy: Policy,
    live: dict[str, list[WorkerSignal]],
    cur: dict[str, int],
    target: dict[str, int],
    budget: int | None,
) -> tuple[tuple[Flip, ...], dict[str, list[str]], dict[str, int]]:
    """Flips first (no reload), then removals, then new workers within the budget."""
    delta = {r: target[r] - cur[r] for r in ROLES}
    flips: list[Flip] = []
    if policy.role_switching:
        for src, dst in (("prefill", "decode"), ("decode", "prefill")):
            if delta[src] < 0 < delta[dst]:
                donors = [w for w in _least_loaded(live[src]) if w.flexible]
                k = min(-delta[src], delta[dst], len(donors), policy.down_step(cur[src]))
                flips += [Flip(w.name, w.role, dst) for w in donors[:k]]
                delta[src] += k
                delta[dst] -= k
    flipped = {f.worker for f in flips}
    removed: dict[str, list[str]] = {}
    for r in ROLES:
        # One shrink step per role and decision, flips out of it included.
        left = policy.down_step(cur[r]) - sum(_role_of(f.from_role) == r for f in flips)
        pool = [w.name for w in _least_loaded(live[r]) if w.name not in flipped]
        removed[r] = pool[: max(0, min(-delta[r], left))]
    add = {r: max(0, delta[r]) for r in ROLES}
    if budget is not None:
        free = budget - policy.gpus(cur["prefill"], cur["decode"])
        free += sum(len(removed[r]) * policy.bounds(r).gpus_per_replica for r in ROLES)
        for r in sorted(ROLES, key=lambda r: -add[r]):
            g = policy.bounds(r).gpus_per_replica
            fit = add[r] if g == 0 else min(add[r], max(0, free) // g)
            add[r], free = fit, free - fit * g
    return tuple(flips), removed, add


def _describe(
    cur: dict[str, int], target: dict[str, int], flips: tuple[Flip, ...], remove: tuple[str, ...]
) -> str:
    parts = [
        f"prefill {cur['prefill']}->{target['prefill']}, decode {cur['decode']}->{target['decode']}"
    ]
    if flips:
        parts.append("flip " + ", ".join(f"{f.worker} {f.from_role}->{f.to_role}" for f in flips))
    if remove:
        parts.append("drain and remove " + ", ".join(remove))
    return ": ".join(parts)
