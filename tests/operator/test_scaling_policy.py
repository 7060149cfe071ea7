"""spec -> the planner's Policy and the loop's settings: every knob reaches the planner."""

from __future__ import annotations

from typing import Any

import pytest

from tandem.api.v1alpha1 import InferencePoolSpec
from tandem.operator.scaling_policy import autoscaled, loop_settings, policy_of
from tandem.planner import Policy, RoleBounds


def spec(**overrides: Any) -> InferencePoolSpec:
    return InferencePoolSpec.model_validate({"model": {"name": "m", "uri": "pvc://m"}, **overrides})


def test_defaults_match_the_planners_own() -> None:
    got = policy_of(spec(autoscaling={"enabled": True}))
    assert got == Policy(
        prefill=RoleBounds(0, None, 1), decode=RoleBounds(1, None, 1), role_switching=False
    )


@pytest.mark.parametrize(
    ("autoscaling", "field", "value"),
    [
        ({"maxGPUs": 7}, "max_gpus", 7),
        ({"roleSwitching": True}, "role_switching", True),
        ({"ttftP99": "1500ms"}, "ttft_slo_s", 1.5),
        ({"tpotP99": "50ms"}, "tpot_slo_s", 0.05),
        ({"targetBusyPercent": 65}, "target_busy", 0.65),
        ({"targetKVUsagePercent": 90}, "target_kv_usage", 0.9),
        ({"tolerancePercent": 0}, "tolerance", 0.0),
        ({"scaleUpWindow": "0s"}, "scale_up_window_s", 0.0),
        ({"scaleDownWindow": "5m"}, "scale_down_window_s", 300.0),
        ({"cooldown": "1m30s"}, "cooldown_s", 90.0),
        ({"minRequests": 3}, "min_requests", 3),
        ({"scaleUpStep": 2}, "scale_up_step", 2),
        ({"scaleDownPercent": 50}, "scale_down_fraction", 0.5),
    ],
)
def test_each_knob(autoscaling: dict[str, Any], field: str, value: Any) -> None:
    got = policy_of(spec(autoscaling={"enabled": True, **autoscaling}))
    assert getattr(got, field) == pytest.approx(value)


def test_role_bounds_come_from_the_roles() -> None:
    got = policy_of(
        spec(
            prefill={"replicas": 2, "minReplicas": 1, "maxReplicas": 4, "gpusPerReplica": 2},
            decode={"replicas": 3, "minReplicas": 2, "gpusPerReplica": 1},
            autoscaling={"enabled": True, "maxGPUs": 12},
        )
    )
    assert got.prefill == RoleBounds(1, 4, 2)
    assert got.decode == RoleBounds(2, None, 1)
    assert got.max_gpus == 12


def test_loop_settings() -> None:
    assert loop_settings(spec(autoscaling={"enabled": True})).interval_s == 15.0
    scrape = loop_settings(spec(autoscaling={"metrics": {"interval": "2s"}}))
    assert (scrape.source, scrape.interval_s, scrape.prometheus_url) == ("scrape", 2.0, None)
    prom = loop_settings(
        spec(autoscaling={"metrics": {"source": "prometheus",
                                      "prometheus": {"url": "http://prom:9090/", "window": "2m"}}})
    )  # fmt: skip
    assert (prom.prometheus_url, prom.prometheus_window_s) == ("http://prom:9090", 120.0)


def test_autoscaled_only_when_enabled() -> None:
    assert not autoscaled(spec())
    assert not autoscaled(spec(autoscaling={"maxGPUs": 4}))
    assert autoscaled(spec(autoscaling={"enabled": True}))
