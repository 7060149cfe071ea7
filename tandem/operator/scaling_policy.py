"""An InferencePool spec -> the planner's `Policy` and the scaling loop's settings (pure).

The API speaks in Kubernetes terms (integer percents, duration strings, camelCase);
the planner in fractions and seconds. This is the one place that translates.
"""

from __future__ import annotations

from dataclasses import dataclass

from tandem.api import v1alpha1 as api
from tandem.planner import Policy, RoleBounds


@dataclass(frozen=True)
class LoopSettings:
    """How the scaling loop of one pool reads its signals and how often it runs."""

    interval_s: float
    source: str  # scrape | prometheus
    prometheus_url: str | None = None
    prometheus_window_s: float | None = None


def _bounds(role: api.RoleSpec) -> RoleBounds:
    return RoleBounds(
        min_replicas=role.min_replicas,
        max_replicas=role.max_replicas,
        gpus_per_replica=role.gpus_per_replica,
    )


def _seconds(text: str | None) -> float | None:
    return None if text is None else api.parse_duration(text)


def policy_of(spec: api.InferencePoolSpec) -> Policy:
    """The planner's policy for a pool; a pool without `autoscaling` gets the defaults."""
    a = spec.autoscaling or api.Autoscaling()
    return Policy(
        prefill=_bounds(spec.prefill),
        decode=_bounds(spec.decode),
        max_gpus=a.max_gpus,
        role_switching=a.role_switching,
        ttft_slo_s=_seconds(a.ttft_p99),
        tpot_slo_s=_seconds(a.tpot_p99),
        target_busy=a.target_busy_percent / 100,
        target_kv_usage=a.target_kv_usage_percent / 100,
        tolerance=a.tolerance_percent / 100,
        scale_up_window_s=api.parse_duration(a.scale_up_window),
        scale_down_window_s=api.parse_duration(a.scale_down_window),
        cooldown_s=api.parse_duration(a.cooldown),
        min_requests=a.min_requests,
        scale_up_step=a.scale_up_step,
        scale_down_fraction=a.scale_down_percent / 100,
    )


def loop_settings(spec: api.InferencePoolSpec) -> LoopSettings:
    m = (spec.autoscaling or api.Autoscaling()).metrics
    prom = m.prometheus if m.source == "prometheus" else None
    return LoopSettings(
        interval_s=api.parse_duration(m.interval),
        source=m.source,
        prometheus_url=prom.url.rstrip("/") if prom else None,
        prometheus_window_s=api.parse_duration(prom.window) if prom else None,
    )


def autoscaled(spec: api.InferencePoolSpec) -> bool:
    return spec.autoscaling is not None and spec.autoscaling.enabled
