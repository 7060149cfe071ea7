"""The kopf handler shell over a fake Kube: what it applies, patches and raises (no cluster)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import kopf
import pytest

from tandem.operator import handlers
from tandem.operator.kube import KubeError
from tandem.operator.objects import PoolRef
from tandem.operator.reconcile import ObjectKey


class FakeKube:
    def __init__(self, fail_apply: KubeError | None = None) -> None:
        self.applied: list[tuple[str, str]] = []
        self.statuses: list[dict[str, Any]] = []
        self.fail_apply = fail_apply

    def owned(self, pool: PoolRef) -> dict[ObjectKey, dict[str, Any]]:
        return {}

    def apply(self, manifest: dict[str, Any]) -> None:
        if self.fail_apply is not None:
            raise self.fail_apply
        self.applied.append((manifest["kind"], manifest["metadata"]["name"]))

    def delete(self, namespace: str, keys: Any) -> None:
        raise AssertionError("nothing to delete")

    def patch_status(self, pool: PoolRef, status: dict[str, Any]) -> None:
        self.statuses.append(status)


def body(spec: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": "p", "namespace": "ns", "uid": "u", "generation": 2}
    return {"apiVersion": "tandem.dev/v1alpha1", "kind": "InferencePool", "metadata": meta,
            "spec": spec}  # fmt: skip


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    posted: list[tuple[str, str]] = []
    monkeypatch.setattr(
        kopf, "event", lambda _b, type, reason, message: posted.append((type, reason))
    )
    monkeypatch.setattr(
        kopf, "warn", lambda _b, reason, message: posted.append(("Warning", reason))
    )
    return posted


def memo(kube: FakeKube) -> kopf.Memo:
    return kopf.Memo(kube=kube, locks=defaultdict(asyncio.Lock), default_image="img")


GOOD = {"model": {"name": "m", "uri": "pvc://m"}}


async def test_converge_applies_in_order_and_reports(events: list[tuple[str, str]]) -> None:
    kube = FakeKube()
    await handlers.converge(memo(kube), body(GOOD))
    assert kube.applied[0] == ("ServiceAccount", "p-router")  # RBAC before the pods need it
    assert kube.applied[-1] == ("Deployment", "p-router")
    assert len(kube.applied) == 9
    (status,) = kube.statuses
    assert status["observedGeneration"] == 2
    assert status["conditions"][0]["reason"] == "Reconciling"
    assert ("Normal", "Created") in events


async def test_invalid_spec_is_permanent_and_named(events: list[tuple[str, str]]) -> None:
    kube = FakeKube()
    bad = {"model": {"name": "m", "uri": "pvc://m"}, "decode": {"replicas": 3, "maxReplicas": 2}}
    with pytest.raises(kopf.PermanentError, match=r"spec\.decode\.replicas"):
        await handlers.converge(memo(kube), body(bad))
    assert kube.applied == []
    (status,) = kube.statuses
    ready = status["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "InvalidSpec")
    assert "spec.decode.replicas" in ready["message"]
    assert events == [("Warning", "InvalidSpec")]


@pytest.mark.parametrize(("status", "delay"), [(409, 5), (503, 5), (0, 5), (403, 30)])
async def test_transient_api_trouble_is_retried(
    events: list[tuple[str, str]], status: int, delay: float
) -> None:
    kube = FakeKube(fail_apply=KubeError(status, "try later"))
    with pytest.raises(kopf.TemporaryError) as err:
        await handlers.converge(memo(kube), body(GOOD))
    assert err.value.delay == delay
    assert kube.statuses == []


async def test_rejected_object_is_permanent(events: list[tuple[str, str]]) -> None:
    kube = FakeKube(fail_apply=KubeError(422, "spec.template.spec.nodeSelector: Invalid value"))
    with pytest.raises(kopf.PermanentError):
        await handlers.converge(memo(kube), body(GOOD))
    assert "nodeSelector" in kube.statuses[-1]["conditions"][0]["message"]


def test_owner_of_an_owned_object() -> None:
    owned = {"metadata": {"ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x"},
        {"apiVersion": "tandem.dev/v1alpha1", "kind": "InferencePool", "name": "p"},
    ]}}  # fmt: skip
    assert handlers._owner(owned) == "p"
    assert handlers._owner({"metadata": {}}) is None


async def test_a_burst_of_owned_events_costs_one_more_converge(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ten events for one pool while a converge holds its lock: one more pass runs after
    it (reading the cluster then), not ten."""
    runs: list[str] = []

    class Pools(FakeKube):
        def get_pool(self, namespace: str, name: str) -> dict[str, Any]:
            return body(GOOD)

    async def fake_converge(m: kopf.Memo, b: Any) -> None:
        async with m.locks[("ns", "p")]:
            runs.append(b["metadata"]["name"])

    monkeypatch.setattr(handlers, "converge", fake_converge)
    m = memo(Pools())
    m.queued = set()
    owned = {"metadata": {"namespace": "ns", "ownerReferences": [
        {"kind": "InferencePool", "apiVersion": "tandem.dev/v1alpha1", "name": "p"}]}}  # fmt: skip
    lock = m.locks[("ns", "p")]
    await lock.acquire()  # a converge in progress
    burst = [asyncio.create_task(handlers.owned_changed(owned, m)) for _ in range(10)]  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    lock.release()
    await asyncio.gather(*burst)
    assert runs == ["p"]
    assert m.queued == set()
    await handlers.owned_changed(owned, m)  # type: ignore[arg-type]
    assert runs == ["p", "p"]  # a later event converges again
