"""One pass of an autoscaled pool's scaling loop: a thin shell over pure functions.

    pods = observe; signals = scrape or Prometheus
    if the pool has settled:  decision = plan(policy, signals, state, now)
                              write status.lastScaling, conditions; mark the chosen pods
    else:                     carry out next_steps(pods, desired): flips, drains, deletes

A pass that decides something carries nothing out: the next pass observes the
pods again with the decision's marks on them. The caller then reconciles the
pool, which sizes the Deployments from `status.lastScaling` and the pods'
marks (see `tandem.operator.layout`). Planner state (the recommendation
history of the stabilization windows) lives in memory, per pool; everything a
restart must not lose is on the pods and in the status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

from tandem.api import v1alpha1 as api
from tandem.operator import metrics, prometheus, worker_control
from tandem.operator.addresses import AddressBook
from tandem.operator.flips import PodView, Step, converged, decision_steps, next_steps
from tandem.operator.kube import Kube, KubeError
from tandem.operator.layout import (
    DELETION_COST,
    FLIP_TO,
    LOWEST_COST,
    SCALE_DOWN,
    WORKER_ROLES,
    Scale,
    is_flexible,
    scale_of,
)
from tandem.operator.objects import ROLE_LABEL, Manifest, PoolRef
from tandem.operator.reconcile import Event
from tandem.operator.scaling_policy import loop_settings, policy_of
from tandem.operator.scaling_status import (
    last_scaling,
    reason_code,
    scaling_conditions,
    scaling_events,
)
from tandem.operator.scraper import Scraper
from tandem.operator.signal_views import (
    for_planner,
    pod_view,
    reports,
    router_pods,
    scraped,
    worker_pods,
)
from tandem.planner import Decision, PlannerState, PoolSignals, plan

log = logging.getLogger(__name__)
Post = Callable[[Event], None]


@dataclass
class PoolMemory:
    """What the loop keeps between passes of one pool (lost on restart, by design)."""

    scraper: Scraper = field(default_factory=Scraper)
    state: PlannerState = field(default_factory=PlannerState)


@dataclass(frozen=True)
class Tools:
    kube: Kube
    book: AddressBook
    session: aiohttp.ClientSession
    post: Post  # an Event on the pool


async def tick(
    tools: Tools,
    memory: PoolMemory,
    pool: PoolRef,
    spec: api.InferencePoolSpec,
    status: Mapping[str, Any],
) -> bool:
    """One pass; True when it changed the status or a pod (the caller then reconciles)."""
    pods = await asyncio.to_thread(tools.kube.pods, pool)
    workers = worker_pods(pods)
    signals = await _signals(tools, memory, pool, spec, workers, router_pods(pods))
    known = reports(signals)
    views = [pod_view(p, known.get(p["metadata"]["name"])) for p in workers]
    scale = scale_of(spec, status, workers)
    decision = plan(policy_of(spec), for_planner(signals, views), memory.state, time.monotonic())
    settled = converged(views, scale.desired, scale.fixed, scale.flexible)
    if not settled and decision.changes:
        decision = _held(decision, scale, memory.state)
    before = {"prefill": scale.desired.prefill, "decode": scale.desired.decode}
    _count(pool, decision, before)
    changed = await _write_status(tools, pool, status, decision)
    memory.state = decision.state
    if decision.changes:
        flips = [(f.worker, f.to_role) for f in decision.flips]
        steps = decision_steps(flips, decision.remove, views)
    else:
        steps = next_steps(views, scale.desired)
    return await _carry_out(tools, pool, steps, {v.name: v for v in views}, workers) or changed


def _held(decision: Decision, scale: Scale, state: PlannerState) -> Decision:
    """A change asked for while the last one is still carried out waits for the next pass."""
    return replace(
        decision,
        action="hold",
        reason="carrying out the last decision",
        prefill=scale.desired.prefill,
        decode=scale.desired.decode,
        flips=(),
        remove=(),
        add_prefill=0,
        add_decode=0,
        state=PlannerState(decision.state.recommendations, state.last_change_at),
    )


def _count(pool: PoolRef, decision: Decision, before: Mapping[str, int]) -> None:
    labels = {"namespace": pool.namespace, "pool": pool.name}
    metrics.DECISIONS.labels(**labels, action=decision.action,
                             reason=reason_code(decision, before)).inc()  # fmt: skip
    if decision.action != "degraded":
        for role in WORKER_ROLES:
            metrics.DESIRED_REPLICAS.labels(**labels, role=role).set(getattr(decision, role))


async def _signals(
    tools: Tools,
    memory: PoolMemory,
    pool: PoolRef,
    spec: api.InferencePoolSpec,
    workers: Sequence[Manifest],
    routers: Sequence[Manifest],
) -> PoolSignals:
    fixed = frozenset(p["metadata"]["name"] for p in workers if not is_flexible(p))
    settings = loop_settings(spec)
    if settings.prometheus_url is not None:
        window = settings.prometheus_window_s or settings.interval_s
        return await prometheus.collect(
            tools.session, settings.prometheus_url, pool.namespace, pool.name, window, fixed
        )
    targets = [(p["metadata"]["name"], tools.book.of(p).metrics) for p in workers if scraped(p)]
    router_targets = [
        (p["metadata"]["name"], tools.book.of(p, router=True).metrics) for p in routers
    ]
    return await memory.scraper.collect(
        tools.session, targets, router_targets, fixed, time.monotonic()
    )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _without_times(conditions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in conditions]


async def _write_status(
    tools: Tools, pool: PoolRef, status: Mapping[str, Any], decision: Decision
) -> bool:
    now = _now()
    conditions = scaling_conditions(status, decision, pool.generation, now)
    patch: dict[str, Any] = {}
    if _without_times(conditions) != _without_times(status.get("conditions") or ()):
        patch["conditions"] = conditions
    if decision.changes:
        patch["lastScaling"] = last_scaling(decision, now)
    for event in scaling_events(status, conditions, decision):
        tools.post(event)
    if patch:
        await asyncio.to_thread(tools.kube.patch_status, pool, patch)
    if decision.changes:
        log.info("pool %s/%s: %s", pool.namespace, pool.name, decision.reason)
    return bool(patch)


async def _carry_out(
    tools: Tools,
    pool: PoolRef,
    steps: Sequence[Step],
    views: Mapping[str, PodView],
    pods: Sequence[Manifest],
) -> bool:
    by_name = {p["metadata"]["name"]: p for p in pods}
    changed = False
    for step in steps:
        try:
            changed |= await _one(tools, pool, step, views[step.pod], by_name[step.pod])
        except (worker_control.WorkerCallError, KubeError) as exc:
            log.warning(
                "pool %s/%s: %s %s: %s", pool.namespace, pool.name, step.kind, step.pod, exc
            )
    return changed


async def _annotate(tools: Tools, pool: PoolRef, pod: str, notes: Mapping[str, str | None]) -> None:
    await asyncio.to_thread(tools.kube.patch_pod, pool.namespace, pod, None, notes)


async def _one(tools: Tools, pool: PoolRef, step: Step, view: PodView, pod: Manifest) -> bool:
    if step.kind == "assign":
        await _annotate(tools, pool, step.pod, {FLIP_TO: step.role})
        return True
    if step.kind == "mark_remove":
        await _annotate(tools, pool, step.pod, {SCALE_DOWN: "drain"})
        return True
    if step.kind == "delete":
        # The ReplicaSet usually got there first (lowest deletion cost); this covers a
        # ReplicaSet that removed another pod in a race.
        await asyncio.to_thread(tools.kube.delete_pod, pool.namespace, step.pod)
        return True
    address = tools.book.of(pod).grpc
    if address is None:
        return False  # no pod IP yet
    if not await worker_control.drain(address):
        return False  # streams still in flight; the worker admits nothing new meanwhile
    if step.kind == "drain":
        if not step.release:
            return False
        await _annotate(tools, pool, step.pod, {SCALE_DOWN: "drained", DELETION_COST: LOWEST_COST})
        tools.post(Event("Normal", "WorkerRemoved", f"pod {step.pod} drained; removing it"))
        return True
    return await _switch(tools, pool, step, view, address)


async def _switch(tools: Tools, pool: PoolRef, step: Step, view: PodView, address: str) -> bool:
    role = await worker_control.set_role(address, step.role)
    labels = {ROLE_LABEL: role}
    await asyncio.to_thread(tools.kube.patch_pod, pool.namespace, step.pod, labels, {FLIP_TO: None})
    if view.role in WORKER_ROLES and view.role != role:
        metrics.ROLE_SWITCHES.labels(namespace=pool.namespace, pool=pool.name, to_role=role).inc()
        tools.post(Event("Normal", "RoleSwitched", f"pod {step.pod}: {view.role} -> {role}"))
    else:
        tools.post(Event("Normal", "WorkerAssigned", f"pod {step.pod} serves {role}"))
    return True
