"""What a decision writes: conditions, lastScaling, Events, the metric's reason code."""

from __future__ import annotations

from tandem.operator.scaling_status import (
    last_scaling,
    reason_code,
    scaling_conditions,
    scaling_events,
)
from tandem.operator.status import keep_scaling_conditions
from tandem.planner import Decision, Flip

NOW = "2026-01-01T00:00:00Z"
BEFORE = {"prefill": 1, "decode": 2}


def cond(status: list[dict[str, str]], kind: str) -> dict[str, str]:
    return next(c for c in status if c["type"] == kind)


def test_limited_by_max_gpus() -> None:
    d = Decision(
        "none",
        "pool at its target",
        1,
        2,
        limited="maxGPUs=3 binds: the signals ask for 1 prefill + 4 decode",
    )
    got = scaling_conditions({}, d, 4, NOW)
    c = cond(got, "ScalingLimited")
    assert (c["status"], c["reason"], c["observedGeneration"]) == ("True", "MaxGPUs", 4)
    assert c["message"].startswith("maxGPUs=3 binds")
    events = scaling_events({}, got, d)
    assert [(e.type, e.reason) for e in events] == [("Warning", "MaxGPUs")]
    # Once set, the same condition again posts nothing.
    assert (
        scaling_events({"conditions": got}, scaling_conditions({"conditions": got}, d, 4, NOW), d)
        == ()
    )


def test_degraded_while_a_source_is_down_then_cleared() -> None:
    down = Decision(
        "degraded", "signal source down: p-decode-x /metrics; no scaling decision", 1, 2
    )
    got = scaling_conditions({}, down, 1, NOW)
    c = cond(got, "Degraded")
    assert (c["status"], c["reason"]) == ("True", "SignalsUnavailable")
    assert "ScalingLimited" not in {x["type"] for x in got}  # nothing is known about bounds
    back = scaling_conditions(
        {"conditions": got}, Decision("none", "pool at its target", 1, 2), 1, NOW
    )
    assert cond(back, "Degraded")["status"] == "False"


def test_a_deployment_failure_is_not_cleared_by_the_loop() -> None:
    failing = {"type": "Degraded", "status": "True", "reason": "DeploymentFailing", "message": "x"}
    got = scaling_conditions(
        {"conditions": [failing]}, Decision("none", "pool at its target", 1, 2), 1, NOW
    )
    assert cond(got, "Degraded")["reason"] == "DeploymentFailing"


def test_a_change_writes_last_scaling_and_an_event() -> None:
    d = Decision("flip", "prefill 1->2, decode 2->1: flip f decode->prefill", 2, 1,
                 flips=(Flip("f", "decode", "prefill"),))  # fmt: skip
    assert last_scaling(d, NOW) == {"time": NOW, "prefill": 2, "decode": 1, "reason": d.reason,
                                    "action": "flip"}  # fmt: skip
    events = scaling_events({}, scaling_conditions({}, d, 1, NOW), d)
    assert ("Normal", "RoleFlip") in [(e.type, e.reason) for e in events]


def test_reason_codes_are_short_and_few() -> None:
    assert reason_code(Decision("scale", "x", 1, 3, add_decode=1), BEFORE) == "decode_up"
    assert reason_code(Decision("flip", "x", 2, 1, flips=(Flip("f", "decode", "prefill"),)),
                       BEFORE) == "prefill_up_decode_down"  # fmt: skip
    assert (
        reason_code(Decision("degraded", "signal source down: a, b", 1, 2), BEFORE)
        == "signals_down"
    )
    assert (
        reason_code(Decision("hold", "cooldown: 3s left since the last change", 1, 2), BEFORE)
        == "cooldown"
    )
    assert (
        reason_code(Decision("hold", "w-1 still draining; pressure ...", 1, 2), BEFORE)
        == "draining"
    )
    assert (
        reason_code(Decision("none", "signals ask decode 2->3, not yet held", 1, 2), BEFORE)
        == "stabilizing"
    )
    assert (
        reason_code(Decision("hold", "carrying out the last decision", 1, 2), BEFORE)
        == "carrying_out"
    )


def test_reconcile_keeps_the_loops_conditions() -> None:
    limited = {"type": "ScalingLimited", "status": "True", "reason": "MaxGPUs", "message": "m"}
    signals = {"type": "Degraded", "status": "True", "reason": "SignalsUnavailable", "message": "s"}
    fresh = {"conditions": [{"type": "Ready", "status": "True"},
                            {"type": "Degraded", "status": "False", "reason": "AsExpected"}]}  # fmt: skip
    got = keep_scaling_conditions(fresh, {"conditions": [limited, signals]})
    assert got["conditions"] == [{"type": "Ready", "status": "True"}, signals, limited]
    failing = {
        "conditions": [{"type": "Degraded", "status": "True", "reason": "DeploymentFailing"}]
    }
    assert (
        keep_scaling_conditions(failing, {"conditions": [signals]})["conditions"]
        == failing["conditions"]
    )
