"""How loaded each role is: the planner's reading of the signals (pure).

Pressure is 1.0 when a role runs exactly at its target: the largest of the
role's signals divided by its target. Prefill: busy fraction, and TTFT p99
against its SLO once the prefill workers are loaded (an idle pool that misses
TTFT on long prompts gains nothing from more workers). Decode: KV-block usage,
and TPOT p99 against its SLO once batches are shared (>= 2 running per worker);
busy fraction only when neither is known (a decode worker is "busy" whenever
one stream runs, so busy says little about its room). `need` is the workers
the role would need to run at target: what the planner sizes from, and what
`tandem audit` and the simulator report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tandem.planner.policy import Policy
from tandem.planner.signals import ROLES, PoolSignals, WorkerSignal

MAX_PRESSURE = 4.0  # a saturated signal (queues growing) says "more", not how much more
TPOT_MIN_BATCH = 2.0  # decode batches below this per worker cannot be split further


@dataclass(frozen=True)
class RoleDemand:
    workers: int  # live (not draining), ready or starting
    ready: int  # those that report signals
    value: float  # pressure: 1.0 = at target
    why: str  # the signal that set it, e.g. "busy 0.95/0.80"

    @property
    def need(self) -> float:
        """Workers the role needs to run at target (the ready ones x pressure)."""
        return self.ready * self.value


def demand(policy: Policy, signals: PoolSignals) -> dict[str, RoleDemand]:
    return {r: _pressure(policy, signals, r, live_workers(signals.workers, r)) for r in ROLES}


def live_workers(workers: Sequence[WorkerSignal], role: str) -> list[WorkerSignal]:
    # `both` (colocated) workers serve decode; what they prefill is counted there too.
    roles = ("decode", "both") if role == "decode" else (role,)
    return [w for w in workers if w.role in roles and not w.draining]


def _pressure(policy: Policy, s: PoolSignals, role: str, live: list[WorkerSignal]) -> RoleDemand:
    ready = [w for w in live if w.ready]
    if not ready:
        return RoleDemand(len(live), 0, 0.0, "no ready workers")
    busy = sum(w.busy or 0.0 for w in ready) / len(ready)
    terms: list[tuple[float, str]] = []
    latency_ok = s.requests >= policy.min_requests
    if role == "prefill":
        terms.append((busy / policy.target_busy, f"busy {busy:.2f}/{policy.target_busy:.2f}"))
        loaded = busy >= policy.ttft_min_busy
        if policy.ttft_slo_s and s.ttft_p99_s is not None and latency_ok and loaded:
            terms.append(
                (
                    s.ttft_p99_s / policy.ttft_slo_s,
                    f"ttft p99 {s.ttft_p99_s:.3g}s/{policy.ttft_slo_s:g}s",
                )
            )
    else:
        sized = [w for w in ready if w.kv_blocks_total]
        if sized:
            # Pooled over the role's blocks, not a mean of fractions: a new worker with a
            # larger cache would otherwise swing the figure and flap the role's size.
            own = sum(w.kv_usage * w.kv_blocks_total for w in sized)
            kv = own / sum(w.kv_blocks_total for w in sized)
            terms.append((kv / policy.target_kv_usage, f"kv {kv:.2f}/{policy.target_kv_usage:.2f}"))
        batch = sum(w.running for w in ready) / len(ready)
        if (
            policy.tpot_slo_s
            and s.tpot_p99_s is not None
            and latency_ok
            and batch >= TPOT_MIN_BATCH
        ):
            terms.append(
                (
                    s.tpot_p99_s / policy.tpot_slo_s,
                    f"tpot p99 {s.tpot_p99_s:.3g}s/{policy.tpot_slo_s:g}s",
                )
            )
        if not terms:
            terms.append((busy / policy.target_busy, f"busy {busy:.2f}/{policy.target_busy:.2f}"))
    value, why = max(terms, key=lambda t: t[0])
    return RoleDemand(len(live), len(ready), min(value, MAX_PRESSURE), why)
