"""reconcile: table-driven, no cluster. Observed objects are built the way the API
server returns them (rendered fields plus server defaults and a status)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tandem.api.v1alpha1 import InferencePoolSpec
from tandem.operator.objects import PoolRef
from tandem.operator.reconcile import (
    Desired,
    ObjectKey,
    Observed,
    contains,
    key_of,
    reconcile,
)
from tandem.operator.render import render

POOL = PoolRef(name="p", namespace="ns", uid="u-1", generation=2)
NOW = "2026-01-01T00:00:00Z"
Objects = dict[ObjectKey, dict[str, Any]]


def spec(**roles: Any) -> InferencePoolSpec:
    return InferencePoolSpec.model_validate({"model": {"name": "m", "uri": "pvc://m"}, **roles})


def served(s: InferencePoolSpec, ready: bool = True) -> Objects:
    """What the API server would hold after applying `s` and letting pods start."""
    out: Objects = {}
    for manifest in render(POOL, s, "img"):
        obj = copy.deepcopy(manifest)
        obj["metadata"].update(uid="x", resourceVersion="7", generation=1)
        if obj["kind"] == "Deployment":
            pod = obj["spec"]["template"]["spec"]
            pod.update(restartPolicy="Always", dnsPolicy="ClusterFirst")
            for c in pod["containers"]:
                c["terminationMessagePath"] = "/dev/termination-log"
            n = obj["spec"]["replicas"]
            obj["status"] = {
                "observedGeneration": 1,
                "replicas": n,
                "updatedReplicas": n,
                "readyReplicas": n if ready else 0,
            }
        out[key_of(obj)] = obj
    return out


def edit(objects: Objects, key: ObjectKey, change: Callable[[dict[str, Any]], None]) -> Objects:
    objects = copy.deepcopy(objects)
    change(objects[key])
    return objects


def ready_status(s: InferencePoolSpec) -> dict[str, Any]:
    plan = reconcile(Desired(POOL, s, "img"), Observed(served(s), {}, NOW))
    assert plan.status is not None
    return dict(plan.status)


@dataclass
class Case:
    name: str
    spec: InferencePoolSpec
    objects: Objects
    previous: dict[str, Any] = field(default_factory=dict)
    applies: set[ObjectKey] = field(default_factory=set)
    deletes: set[ObjectKey] = field(default_factory=set)
    ready: str | None = "True"  # Ready condition status; None: no status patch expected
    reason: str = "AllReplicasReady"
    events: set[str] = field(default_factory=set)


ONE = spec()
TWO_DECODE = spec(decode={"replicas": 2})


def _set_decode_replicas(n: int) -> Callable[[dict[str, Any]], None]:
    def change(obj: dict[str, Any]) -> None:
        obj["spec"]["replicas"] = n

    return change


def _set_image(obj: dict[str, Any]) -> None:
    obj["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"


def _cpu_as_millis(obj: dict[str, Any]) -> None:
    obj["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "1"
    obj["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"] = {"cpu": "1"}


def _deadline(obj: dict[str, Any]) -> None:
    obj["status"]["readyReplicas"] = 0
    obj["status"]["conditions"] = [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
         "message": "ReplicaSet p-decode-1 has timed out progressing."}
    ]  # fmt: skip


ALL_KEYS = set(served(ONE))
CASES = [
    Case("nothing yet: create all", ONE, {}, applies=ALL_KEYS, ready="False",
         reason="Reconciling", events={"Created"}),
    Case("all there and ready", ONE, served(ONE), events={"AllReplicasReady"}),
    Case("steady state: nothing to do", ONE, served(ONE), previous=ready_status(ONE), ready=None),
    Case("pods not ready yet", ONE, served(ONE, ready=False), ready="False",
         reason="ReplicasNotReady"),
    Case("hand-edited replicas are drift", ONE,
         edit(served(ONE), ("Deployment", "p-decode"), _set_decode_replicas(5)),
         previous=ready_status(ONE), applies={("Deployment", "p-decode")}, events={"Updated"}),
    Case("hand-edited image is drift", ONE,
         edit(served(ONE), ("Deployment", "p-prefill"), _set_image),
         applies={("Deployment", "p-prefill")}, events={"Updated", "AllReplicasReady"}),
    Case("server defaults and extra fields are not drift", ONE,
         edit(served(ONE), ("Deployment", "p-router"), lambda o: o["metadata"]["annotations"].update(
             {"deployment.kubernetes.io/revision": "1"})),
         events={"AllReplicasReady"}),
    Case("scale decode up: deployment and a new budget", TWO_DECODE, served(ONE),
         applies={("Deployment", "p-decode"), ("PodDisruptionBudget", "p-decode")},
         ready="False", reason="Reconciling", events={"Created", "Updated"}),
    Case("scale decode down: budget deleted", ONE, served(TWO_DECODE),
         applies={("Deployment", "p-decode")}, deletes={("PodDisruptionBudget", "p-decode")},
         events={"Updated", "Deleted", "AllReplicasReady"}),
    Case("a vanished service is recreated", ONE,
         {k: v for k, v in served(ONE).items() if k != ("Service", "p-decode")},
         applies={("Service", "p-decode")}, events={"Created", "AllReplicasReady"}),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_reconcile(case: Case) -> None:
    plan = reconcile(Desired(POOL, case.spec, "img"), Observed(case.objects, case.previous, NOW))
    assert {key_of(m) for m in plan.apply} == case.applies
    assert set(plan.delete) == case.deletes
    assert {e.reason for e in plan.events} == case.events
    if case.ready is None:
        assert plan.status is None
        return
    assert plan.status is not None
    ready = next(c for c in plan.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == (case.ready, case.reason)
    assert plan.status["observedGeneration"] == 2


def test_applied_manifests_equal_rendered_ones() -> None:
    plan = reconcile(Desired(POOL, TWO_DECODE, "img"), Observed({}, {}, NOW))
    assert list(plan.apply) == list(render(POOL, TWO_DECODE, "img"))


def test_counts_per_role() -> None:
    s = spec(prefill={"replicas": 2}, decode={"replicas": 3}, router={"replicas": 1})
    objects = edit(served(s), ("Deployment", "p-decode"),
                   lambda o: o["status"].update(readyReplicas=1))  # fmt: skip
    plan = reconcile(Desired(POOL, s, "img"), Observed(objects, {}, NOW))
    assert plan.status is not None
    assert plan.status["prefill"] == {"replicas": 2, "readyReplicas": 2, "ready": "2/2"}
    assert plan.status["decode"] == {"replicas": 3, "readyReplicas": 1, "ready": "1/3"}
    assert plan.status["router"] == {"replicas": 1, "readyReplicas": 1, "ready": "1/1"}
    ready = plan.status["conditions"][0]
    assert ready["status"] == "False" and "decode 1/3" in ready["message"]


def test_failing_deployment_is_degraded() -> None:
    objects = edit(served(ONE), ("Deployment", "p-decode"), _deadline)
    plan = reconcile(Desired(POOL, ONE, "img"), Observed(objects, {}, NOW))
    assert plan.status is not None
    degraded = next(c for c in plan.status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "DeploymentFailing"
    assert "decode: ProgressDeadlineExceeded" in degraded["message"]
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "DeploymentFailing")]


def test_stale_deployment_generation_is_not_ready() -> None:
    objects = edit(served(ONE), ("Deployment", "p-router"),
                   lambda o: o["metadata"].update(generation=2))  # fmt: skip
    plan = reconcile(Desired(POOL, ONE, "img"), Observed(objects, {}, NOW))
    assert plan.status is not None and plan.status["conditions"][0]["status"] == "False"


def test_transition_time_kept_while_status_holds() -> None:
    earlier = ready_status(ONE)
    objects = edit(served(ONE), ("Deployment", "p-decode"),
                   lambda o: o["status"].update(readyReplicas=0))  # fmt: skip
    plan = reconcile(Desired(POOL, ONE, "img"), Observed(objects, earlier, "2026-01-02T00:00:00Z"))
    assert plan.status is not None
    by_type = {c["type"]: c for c in plan.status["conditions"]}
    assert by_type["Ready"]["lastTransitionTime"] == "2026-01-02T00:00:00Z"  # flipped
    assert by_type["Degraded"]["lastTransitionTime"] == NOW  # still False since NOW


@pytest.mark.parametrize(
    ("observed", "desired", "same"),
    [
        ({"a": 1, "b": 2}, {"a": 1}, True),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ({"l": [{"x": 1, "y": 2}]}, {"l": [{"x": 1}]}, True),
        ({"l": [{"x": 1}, {"x": 2}]}, {"l": [{"x": 1}]}, False),
        ({"cpu": "1"}, {"cpu": "1000m"}, True),
        ({"mem": "1Gi"}, {"mem": "1073741824"}, True),
        ({"mem": "1Gi"}, {"mem": "1G"}, False),
        ({"image": "tandem"}, {"image": "tandem:1"}, False),
        ({"n": 1}, {"n": "1"}, False),
    ],
)
def test_contains(observed: Any, desired: Any, same: bool) -> None:
    assert contains(observed, desired) is same


def test_fields_dropped_from_the_spec_are_applied() -> None:
    # The observed Deployment still has what the old spec rendered; the new spec leaves the
    # node selector's second key and the tolerations out. Server-side apply only removes
    # them if the operator applies again, so this must not read as "no change".
    placed = {"replicas": 1, "nodeSelector": {"gpu": "h100", "zone": "a"},
              "tolerations": [{"key": "gpu", "operator": "Exists"}]}  # fmt: skip
    before = spec(decode=placed)
    after = spec(decode={"replicas": 1, "nodeSelector": {"gpu": "h100"}})
    plan = reconcile(
        Desired(POOL, after, "img"), Observed(served(before), ready_status(before), NOW)
    )
    assert {key_of(m) for m in plan.apply} == {("Deployment", "p-decode")}
    again = reconcile(
        Desired(POOL, after, "img"), Observed(served(after), ready_status(after), NOW)
    )
    assert again.apply == ()
