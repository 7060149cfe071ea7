"""`tandem serve --autoscale`, the pure parts: its knobs, the planner's view of one
scrape window, what serve carries out of a decision, and what it logs.

The planner (tandem.planner) decides; this module only adapts it to one machine:
a fixed set of N workers (the GPU budget is N), so redistribution is by role
flips alone. A decision to start or remove a worker is not carried out (there is
no free GPU to start one on, and a worker removed would only sit idle); it is
logged once as held.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from tandem.planner import Decision, Flip, Policy, PoolSignals, RoleBounds
from tandem.planner.scrape import MetricsError, Snapshot, parse, pool_signals

ROUTER = "router"


@dataclass(frozen=True)
class AutoscaleConfig:
    """The `--autoscale` flags; defaults are the planner's (`Policy`)."""

    interval_s: float = 10.0  # --scale-interval: seconds between scrapes (the signal window)
    ttft_slo_s: float | None = None  # --ttft-slo
    tpot_slo_s: float | None = None  # --tpot-slo
    target_busy: float = 0.8  # --target-busy
    target_kv_usage: float = 0.8  # --target-kv-usage
    tolerance: float = 0.1  # --tolerance
    scale_up_window_s: float = 30.0  # --scale-up-window
    scale_down_window_s: float = 120.0  # --scale-down-window
    cooldown_s: float = 30.0  # --cooldown
    min_requests: int = 20  # --min-requests
    flip_timeout_s: float = 600.0  # --flip-timeout: longest wait for a drain and SetRole

    def __post_init__(self) -> None:
        _positive("--scale-interval", self.interval_s)
        _positive("--flip-timeout", self.flip_timeout_s)
        for flag, v in (("--ttft-slo", self.ttft_slo_s), ("--tpot-slo", self.tpot_slo_s)):
            if v is not None:
                _positive(flag, v)
        for flag, v in (
            ("--target-busy", self.target_busy),
            ("--target-kv-usage", self.target_kv_usage),
        ):
            if not (0 < v <= 1):
                raise ValueError(f"{flag}: must be in (0, 1], got {v}")
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"--tolerance: must be in [0, 1), got {self.tolerance}")
        for flag, v in (
            ("--scale-up-window", self.scale_up_window_s),
            ("--scale-down-window", self.scale_down_window_s),
            ("--cooldown", self.cooldown_s),
        ):
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{flag}: must be >= 0 seconds, got {v}")
        if self.min_requests < 0:
            raise ValueError(f"--min-requests: must be >= 0, got {self.min_requests}")

    def policy(self, workers: int) -> Policy:
        """The planner's policy for `workers` flexible workers on one machine: one GPU
        (or CPU slot) each, at least one worker per role so the router can always serve."""
        return Policy(
            prefill=RoleBounds(min_replicas=1),
            decode=RoleBounds(min_replicas=1),
            max_gpus=workers,
            ttft_slo_s=self.ttft_slo_s,
            tpot_slo_s=self.tpot_slo_s,
            target_busy=self.target_busy,
            target_kv_usage=self.target_kv_usage,
            tolerance=self.tolerance,
            scale_up_window_s=self.scale_up_window_s,
            scale_down_window_s=self.scale_down_window_s,
            cooldown_s=self.cooldown_s,
            min_requests=self.min_requests,
            # One machine's workers are all there is: nothing to start or remove, so the
            # planner rebalances the same workers instead of asking for removals.
            hold_budget=True,
        )


def _positive(flag: str, v: float) -> None:
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{flag}: must be > 0 seconds, got {v}")


# ----- one scrape round -> the planner's signals ---------------------------------
@dataclass(frozen=True)
class Scrape:
    """One round: every target's /metrics text, or why it could not be read."""

    at: float  # monotonic seconds
    texts: Mapping[str, str]  # target name -> Prometheus text (workers by name, ROUTER)
    errors: Mapping[str, str] = field(default_factory=dict)  # target name -> what failed


@dataclass(frozen=True)
class Round:
    """A scrape round, parsed: snapshots of the targets that answered."""

    at: float
    snapshots: Mapping[str, Snapshot]
    errors: Mapping[str, str]


def parsed(scrape: Scrape) -> Round:
    snaps: dict[str, Snapshot] = {}
    errors = dict(scrape.errors)
    for name, text in scrape.texts.items():
        try:
            snaps[name] = parse(text)
        except MetricsError as exc:
            errors[name] = str(exc)
    return Round(scrape.at, snaps, errors)


def window(before: Round, after: Round, workers: tuple[str, ...]) -> PoolSignals:
    """The planner's signals between two rounds. A target missing from either round
    is named in `missing` (the planner then decides nothing: its degraded path)."""
    targets = (*workers, ROUTER)
    missing = [t for t in targets if t not in before.snapshots or t not in after.snapshots]
    answered = [w for w in workers if w not in missing]
    pairs = [(w, before.snapshots[w], after.snapshots[w]) for w in answered]
    routers = [] if ROUTER in missing else [(before.snapshots[ROUTER], after.snapshots[ROUTER])]
    try:
        return pool_signals(pairs, routers, after.at - before.at, missing=missing)
    except MetricsError as exc:  # a page without Tandem's gauges: that target is not usable
        name = str(exc).split(":", 1)[0]
        return PoolSignals(workers=(), window_s=after.at - before.at, missing=(*missing, name))


# ----- what serve carries out -------------------------------------------------------
@dataclass(frozen=True)
class Actions:
    flips: tuple[Flip, ...]
    held: str  # "" or what the planner asked that serve does not do (start/remove workers)


def actions(decision: Decision) -> Actions:
    asked = []
    if decision.remove:
        asked.append("remove " + ", ".join(decision.remove))
    if decision.add_prefill or decision.add_decode:
        asked.append(f"start {decision.add_prefill} prefill + {decision.add_decode} decode")
    held = ""
    if asked:
        held = f"planner asks to {' and '.join(asked)}; tandem serve keeps its workers"
    return Actions(decision.flips, held)


# ----- what gets logged --------------------------------------------------------------
@dataclass(frozen=True)
class LogState:
    """The states already logged, so that each change is logged once."""

    status: str = ""  # e.g. "degraded: signal source down: router", "hold: cooldown"
    limited: str = ""


HELD = "hold: the planner asks for a start or removal"  # serve's own state (fixed workers)


def _status(decision: Decision, held: str) -> str:
    """The state a decision leaves the loop in, without the figures that move each
    round, so that a state is logged when it begins and not again while it lasts."""
    if decision.action == "degraded":
        return f"degraded: {decision.reason}"
    if decision.action == "hold":
        # "cooldown: 12s left since ..." -> "cooldown"
        what = decision.reason.split(";")[0]
        return "hold: " + re.sub(r": [\d.]+s left.*", "", what)
    if held:
        return HELD
    return "ok"


def _limited(decision: Decision) -> str:
    # "maxGPUs=4 binds: the signals ask for 5 prefill + 1 decode" -> "maxGPUs=4 binds"
    return decision.limited.split(":")[0]


def _flip_line(f: Flip, reason: str) -> str:
    # The planner's reason names every flip ("...: flip a x->y, b x->y; pressure ..."):
    # this line is about one of them, so say it once, first.
    rest = re.sub(r": flip [^;]*", "", reason)
    return f"autoscale: flip {f.worker} {f.from_role}->{f.to_role}: {rest}"


def log_lines(state: LogState, decision: Decision, held: str = "") -> tuple[LogState, list[str]]:
    """Lines for this decision: one per flip carried out, one per state change."""
    lines = [_flip_line(f, decision.reason) for f in decision.flips]
    status = _status(decision, held)
    if status != state.status and not (decision.flips and status == "ok"):
        if status == "ok":
            if state.status:  # the first "ok" of a run is not a change worth a line
                lines.append(f"autoscale: resumed: {decision.reason}")
        elif status == HELD:
            lines.append(f"autoscale: hold: {held}: {decision.reason}")
        elif decision.action == "hold":
            lines.append(f"autoscale: hold: {decision.reason}")
        else:
            lines.append(f"autoscale: {status}")
    limited = _limited(decision)
    if limited != state.limited:
        if limited:
            lines.append(f"autoscale: limited: {decision.limited}")
        else:
            lines.append("autoscale: no longer limited")
    return LogState(status, limited), lines
