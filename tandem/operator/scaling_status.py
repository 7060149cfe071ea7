"""What one scaling decision writes: status.lastScaling, the ScalingLimited and Degraded
conditions, Events, and the short reason code of the decision metric (pure).

`status.conditions` is one list that the reconcile pass and the scaling loop
both write (a merge patch replaces a list whole), so each keeps the
conditions the other owns: ScalingLimited belongs to the scaling loop, and
so does a Degraded condition with reason `SignalsUnavailable`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tandem.operator.reconcile import Event
from tandem.operator.status import SIGNALS_DOWN, condition, with_transition_times
from tandem.planner import Decision

#: Reason codes of decisions that change nothing, by the start of the planner's reason.
_HOLD_CODES = (
    ("signal source down", "signals_down"),
    ("no busy fraction yet", "warming_up"),
    ("cooldown", "cooldown"),
    ("no flexible worker or GPU", "no_move"),
    ("pool at its target", "at_target"),
    ("signals ask", "stabilizing"),
    ("carrying out the last decision", "carrying_out"),
)


def reason_code(decision: Decision, before: Mapping[str, int]) -> str:
    """A low-cardinality label for `tandem_planner_decisions_total{reason}`."""
    if decision.changes:
        moves = [
            f"{role}_{'up' if after > before[role] else 'down'}"
            for role, after in (("prefill", decision.prefill), ("decode", decision.decode))
            if after != before[role]
        ]
        return "_".join(moves) or "rebalance"
    if "still draining" in decision.reason.split(";")[0]:
        return "draining"
    for prefix, code in _HOLD_CODES:
        if decision.reason.startswith(prefix):
            return code
    return "other"


def _limited_reason(limited: str) -> str:
    return "MaxGPUs" if limited.startswith("maxGPUs") else "MaxReplicas"


def scaling_conditions(
    previous: Mapping[str, Any], decision: Decision, generation: int, now: str
) -> list[dict[str, Any]]:
    """The pool's conditions after this decision: ScalingLimited set from it, Degraded
    set while a signal source is down (and cleared when it was what degraded the pool)."""
    before = {c.get("type"): dict(c) for c in previous.get("conditions") or ()}
    if decision.limited:
        before["ScalingLimited"] = condition(
            "ScalingLimited", True, _limited_reason(decision.limited), decision.limited, generation
        )
    elif decision.action != "degraded":
        before["ScalingLimited"] = condition(
            "ScalingLimited", False, "WithinBounds", "no bound holds the pool back", generation
        )
    degraded = before.get("Degraded")
    if decision.action == "degraded":
        before["Degraded"] = condition("Degraded", True, SIGNALS_DOWN, decision.reason, generation)
    elif degraded is not None and degraded.get("reason") == SIGNALS_DOWN:
        before["Degraded"] = condition(
            "Degraded", False, "AsExpected", "signal sources answer", generation
        )
    status = with_transition_times({"conditions": list(before.values())}, previous, now)
    return list(status["conditions"])


def last_scaling(decision: Decision, now: str) -> dict[str, Any]:
    return {
        "time": now,
        "prefill": decision.prefill,
        "decode": decision.decode,
        "reason": decision.reason,
        "action": decision.action,
    }


def scaling_events(
    previous: Mapping[str, Any], conditions: list[dict[str, Any]], decision: Decision
) -> tuple[Event, ...]:
    events: list[Event] = []
    if decision.changes:
        reason = "RoleFlip" if decision.action == "flip" else "Scaled"
        events.append(Event("Normal", reason, decision.reason))
    before = {c.get("type"): c for c in previous.get("conditions") or ()}
    for c in conditions:
        old = before.get(c["type"]) or {}
        turned = c["status"] == "True" and (
            old.get("status") != "True" or old.get("reason") != c["reason"]
        )
        if c["type"] in ("ScalingLimited", "Degraded") and turned and c["reason"] != "AsExpected":
            events.append(Event("Warning", c["reason"], c["message"]))
    return tuple(events)
