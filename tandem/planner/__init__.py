"""The redistribution planner: how many prefill and decode workers a pool should
run, and which workers to flip or drain to get there.

Pure and torch-free: the operator, `tandem serve --autoscale` and the fleet
simulator all import it and call `plan(policy, signals, state, now)`; each
carries the decision out its own way.
"""

from tandem.planner.decision import Decision, Flip, PlannerState, Recommendation
from tandem.planner.demand import RoleDemand, demand
from tandem.planner.plan import plan
from tandem.planner.policy import Policy, RoleBounds
from tandem.planner.signals import PoolSignals, WorkerSignal

__all__ = [
    "Decision",
    "Flip",
    "PlannerState",
    "Policy",
    "PoolSignals",
    "Recommendation",
    "RoleBounds",
    "RoleDemand",
    "WorkerSignal",
    "demand",
    "plan",
]
