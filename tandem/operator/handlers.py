"""kopf handlers: thin shells that observe, call `reconcile`, and carry out the plan.

One path (`converge`) serves every trigger: pool created, changed or found at
start-up, an owned object changed (drift, pods becoming ready), and a slow
periodic resync. A per-pool lock keeps triggers for one pool from interleaving.
Handlers return None: kopf would write return values into the status.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any, cast

import aiohttp
import kopf

from tandem.api import v1alpha1 as api
from tandem.operator import metrics, scaling
from tandem.operator.addresses import AddressBook, AddressFileError
from tandem.operator.kube import OWNED_KINDS, Kube, KubeError, api_client
from tandem.operator.objects import POOL_LABEL, PoolRef
from tandem.operator.pool import InvalidSpec, parse_spec, pool_ref
from tandem.operator.reconcile import Desired, Event, Observed, Plan, reconcile
from tandem.operator.scaling_policy import autoscaled, loop_settings
from tandem.operator.signal_views import worker_pods
from tandem.operator.status import invalid_spec_status, with_transition_times

log = logging.getLogger(__name__)
RESYNC_SECONDS = 120.0
SCALING_RETRY_S = 5.0  # after a failed scaling pass, or while a pool is not autoscaled


def _as_body(body: Mapping[str, Any]) -> kopf.Body:
    # kopf reads only apiVersion, kind and metadata from it to build the Event's reference.
    return cast(kopf.Body, body)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Keep kopf's bookkeeping in annotations: the structural schema would prune status.kopf.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # Events carry what we did, not every log line
    settings.posting.reporting_component = "tandem-operator"
    settings.watching.server_timeout = 300
    if memo.get("namespaces"):
        # Serving named namespaces needs no cluster-wide listing of namespaces or CRDs
        # (which a namespaced install's RoleBindings do not grant): observe statically.
        settings.scanning.disabled = True
    memo.kube = Kube(await asyncio.to_thread(api_client, memo.get("kubeconfig")))
    memo.locks = defaultdict(asyncio.Lock)
    memo.queued = set()  # pools with an owned-object converge waiting for their lock
    memo.addresses = AddressBook(memo.get("pod_addresses"))


async def _run(plan: Plan, kube: Kube, body: Mapping[str, Any]) -> None:
    pool = pool_ref(body)
    for manifest in plan.apply:
        await asyncio.to_thread(kube.apply, manifest)
    if plan.delete:
        await asyncio.to_thread(kube.delete, pool.namespace, plan.delete)
    if plan.status is not None:
        await asyncio.to_thread(kube.patch_status, pool, dict(plan.status))
    for event in plan.events:
        kopf.event(_as_body(body), type=event.type, reason=event.reason, message=event.message)


async def _reject(kube: Kube, body: Mapping[str, Any], message: str) -> None:
    pool = pool_ref(body)
    status = invalid_spec_status(pool.generation, message)
    status = with_transition_times(status, body.get("status") or {}, _now())
    await asyncio.to_thread(kube.patch_status, pool, status)
    kopf.warn(_as_body(body), reason="InvalidSpec", message=message)


async def converge(memo: kopf.Memo, body: Mapping[str, Any]) -> None:
    """Bring one pool's owned objects and status in line with its spec."""
    kube: Kube = memo.kube
    pool = pool_ref(body)
    started = time.monotonic()
    async with memo.locks[(pool.namespace, pool.name)]:
        try:
            spec = parse_spec(body)
        except InvalidSpec as exc:
            metrics.observe("invalid", started)
            await _reject(kube, body, str(exc))
            raise kopf.PermanentError(str(exc)) from None
        try:
            objects = await asyncio.to_thread(kube.owned, pool)
            pods = await asyncio.to_thread(kube.pods, pool) if autoscaled(spec) else []
            observed = Observed(objects, body.get("status") or {}, _now(), worker_pods(pods))
            plan = reconcile(Desired(pool, spec, memo.default_image), observed)
            await _run(plan, kube, body)
        except KubeError as exc:
            metrics.observe("error", started)
            if exc.transient:
                delay = 30 if exc.status == 403 else 5
                raise kopf.TemporaryError(f"Kubernetes API: {exc}", delay=delay) from exc
            await _reject(kube, body, f"the API server refused an owned object: {exc.message}")
            raise kopf.PermanentError(str(exc)) from exc
    metrics.observe("applied" if plan.apply or plan.delete else "unchanged", started)


@kopf.on.resume(api.GROUP, api.VERSION, api.PLURAL)
@kopf.on.create(api.GROUP, api.VERSION, api.PLURAL)
@kopf.on.update(api.GROUP, api.VERSION, api.PLURAL)
async def pool_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await converge(memo, body)


@kopf.timer(api.GROUP, api.VERSION, api.PLURAL, interval=RESYNC_SECONDS, idle=RESYNC_SECONDS)
async def pool_resync(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    # A safety net for missed watch events; converge is cheap when nothing changed.
    await converge(memo, body)


def _autoscaling_on(spec: kopf.Spec, **_: Any) -> bool:
    return bool((spec.get("autoscaling") or {}).get("enabled"))


@kopf.daemon(api.GROUP, api.VERSION, api.PLURAL, when=_autoscaling_on, cancellation_timeout=5.0)
async def scaling_loop(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped,
                       **_: Any) -> None:  # fmt: skip
    """The periodic, level-triggered scaling loop of one autoscaled pool."""
    pool = pool_ref(body)
    memory = scaling.PoolMemory()
    async with aiohttp.ClientSession() as session:
        while not stopped:
            interval = await _scaling_pass(memo, pool, memory, session, body)
            await stopped.wait(interval)


async def _scaling_pass(
    memo: kopf.Memo,
    pool: PoolRef,
    memory: scaling.PoolMemory,
    session: aiohttp.ClientSession,
    body: kopf.Body,
) -> float:
    """One pass under the pool's lock, then a reconcile if it changed something; the
    seconds until the next pass."""
    kube: Kube = memo.kube

    def post(event: Event) -> None:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)

    try:
        async with memo.locks[(pool.namespace, pool.name)]:
            fresh = await asyncio.to_thread(kube.get_pool, pool.namespace, pool.name)
            if fresh is None or fresh["metadata"].get("deletionTimestamp"):
                return SCALING_RETRY_S
            spec = parse_spec(fresh)
            if not autoscaled(spec):
                return SCALING_RETRY_S
            tools = scaling.Tools(kube, memo.addresses, session, post)
            changed = await scaling.tick(tools, memory, pool_ref(fresh), spec,
                                         fresh.get("status") or {})  # fmt: skip
        if changed:
            fresh = await asyncio.to_thread(kube.get_pool, pool.namespace, pool.name)
            if fresh is not None:
                await converge(memo, fresh)
        return loop_settings(spec).interval_s
    except (InvalidSpec, kopf.PermanentError, kopf.TemporaryError) as exc:
        log.warning("pool %s/%s: scaling pass skipped: %s", pool.namespace, pool.name, exc)
    except (KubeError, AddressFileError) as exc:
        log.warning("pool %s/%s: scaling pass failed: %s", pool.namespace, pool.name, exc)
    return SCALING_RETRY_S


def _owner(body: Mapping[str, Any]) -> str | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or ():
        if ref.get("kind") == api.KIND and str(ref.get("apiVersion", "")).startswith(api.GROUP):
            return str(ref["name"])
    return None


async def owned_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """An owned object changed (or vanished): converge its pool, which reverts drift."""
    name, namespace = _owner(body), body.get("metadata", {}).get("namespace")
    if name is None or namespace is None:
        return
    kube: Kube = memo.kube
    key = (namespace, name)
    if key in memo.queued:
        # A converge of this pool already waits for the lock and will read the cluster
        # after this event: a burst of events (a pool's pods becoming ready, controllers
        # updating status) costs one more converge, not one each.
        return
    memo.queued.add(key)
    queued = True
    try:
        async with memo.locks[key]:
            memo.queued.discard(key)  # from here on, a new event queues another pass
            queued = False
        pool = await asyncio.to_thread(kube.get_pool, namespace, name)
        if pool is not None and pool["metadata"].get("deletionTimestamp") is None:
            await converge(memo, pool)
    except (kopf.PermanentError, kopf.TemporaryError, KubeError) as exc:
        # Event handlers are not retried; the pool's own handlers and the resync will be.
        log.warning("pool %s/%s: %s", namespace, name, exc)
    finally:
        if queued:  # left before its turn (cancelled): let the next event queue a pass
            memo.queued.discard(key)


_GROUPS = {"/api/v1": "", "/apis/apps/v1": "apps", "/apis/policy/v1": "policy"}
for _kind, (_prefix, _plural) in OWNED_KINDS.items():
    _group = _GROUPS.get(_prefix, "rbac.authorization.k8s.io")
    kopf.on.event(_group, "v1", _plural, labels={POOL_LABEL: kopf.PRESENT}, id=f"owned-{_plural}")(
        owned_changed
    )
