"""The operator's own Prometheus metrics."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "tandem_operator_reconciles_total",
    "Reconcile passes of InferencePools, by outcome.",
    ["outcome"],  # applied | unchanged | invalid | error
)
RECONCILE_SECONDS = Histogram(
    "tandem_operator_reconcile_seconds",
    "Time of one reconcile pass (observe, plan, apply, status).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

DESIRED_REPLICAS = Gauge(
    "tandem_planner_desired_replicas",
    "Workers per role the planner wants the pool to run (its last decision).",
    ["namespace", "pool", "role"],
)
DECISIONS = Counter(
    "tandem_planner_decisions_total",
    "Planner decisions, by action and a short reason code (see docs/operator.md).",
    ["namespace", "pool", "action", "reason"],
)
ROLE_SWITCHES = Counter(
    "tandem_operator_role_switches_total",
    "Role switches of flexible workers the operator carried out (drain, SetRole, relabel).",
    ["namespace", "pool", "to_role"],
)


def observe(outcome: str, started: float) -> None:
    RECONCILES.labels(outcome=outcome).inc()
    RECONCILE_SECONDS.observe(time.monotonic() - started)
