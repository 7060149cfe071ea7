"""One pass of the scaling loop with the cluster and the workers faked: what it writes
and calls, in which order (the pure parts are tested on their own elsewhere)."""

from __future__ import annotations

from typing import Any

import pytest

from tandem.api.v1alpha1 import InferencePoolSpec
from tandem.operator import scaling, worker_control
from tandem.operator.addresses import AddressBook
from tandem.operator.objects import PoolRef
from tandem.operator.reconcile import Event
from tandem.planner import PoolSignals, WorkerSignal

POOL = PoolRef("p", "ns", "uid", 1)


def spec(**autoscaling: Any) -> InferencePoolSpec:
    return InferencePoolSpec.model_validate({
        "model": {"name": "m", "uri": "pvc://m"},
        "prefill": {"replicas": 1, "minReplicas": 1, "maxReplicas": 3},
        "decode": {"replicas": 2, "minReplicas": 1, "maxReplicas": 3},
        "autoscaling": {"enabled": True, "roleSwitching": True, "scaleUpWindow": "0s",
                        "scaleDownWindow": "0s", "cooldown": "0s", **autoscaling},
    })  # fmt: skip


def pod(name: str, role: str, flexible: bool = False, **notes: str) -> dict[str, Any]:
    labels = {"tandem.dev/pool": "p", "tandem.dev/role": role}
    if flexible:
        labels["tandem.dev/flexible"] = "true"
    return {
        "metadata": {"name": name, "namespace": "ns", "labels": labels, "annotations": notes},
        "status": {
            "podIP": f"10.0.0.{len(name)}",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


PODS = [pod("p0", "prefill"), pod("d0", "decode"), pod("f1", "decode", flexible=True)]


class FakeKube:
    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self._pods = pods
        self.calls: list[tuple[Any, ...]] = []

    def pods(self, pool: PoolRef) -> list[dict[str, Any]]:
        return self._pods

    def patch_pod(self, ns: str, name: str, labels: Any, annotations: Any) -> None:
        self.calls.append(("patch_pod", name, labels, annotations))

    def delete_pod(self, ns: str, name: str) -> None:
        self.calls.append(("delete_pod", name))

    def patch_status(self, pool: PoolRef, status: dict[str, Any]) -> None:
        self.calls.append(("patch_status", status))


def busy(name: str, role: str, value: float, kv: int = 0, flexible: bool = True) -> WorkerSignal:
    return WorkerSignal(name, role, busy=value, kv_blocks_used=kv, kv_blocks_total=100,
                        flexible=flexible)  # fmt: skip


class FakeWorkers:
    """Drain and SetRole as the workers would answer them; `drained` says whether a
    Drain call finds the worker drained yet."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.drained = True

    async def drain(self, address: str, timeout_s: float = 2.0) -> bool:
        self.calls.append(("drain", address))
        return self.drained

    async def set_role(self, address: str, role: str, timeout_s: float = 2.0) -> str:
        self.calls.append(("set_role", address, role))
        return role


@pytest.fixture
def rpc(monkeypatch: pytest.MonkeyPatch) -> FakeWorkers:
    workers = FakeWorkers()
    monkeypatch.setattr(worker_control, "drain", workers.drain)
    monkeypatch.setattr(worker_control, "set_role", workers.set_role)
    return workers


async def run(
    monkeypatch: pytest.MonkeyPatch,
    pods: list[dict[str, Any]],
    signals: PoolSignals,
    status: dict[str, Any] | None = None,
    s: InferencePoolSpec | None = None,
) -> tuple[FakeKube, list[Event], bool]:
    async def fake_signals(*_: Any) -> PoolSignals:
        return signals

    monkeypatch.setattr(scaling, "_signals", fake_signals)
    kube, events = FakeKube(pods), []
    tools = scaling.Tools(kube, AddressBook(None), None, events.append)  # type: ignore[arg-type]
    changed = await scaling.tick(tools, scaling.PoolMemory(), POOL, s or spec(), status or {})
    return kube, events, changed


SETTLED = PoolSignals(
    workers=(busy("p0", "prefill", 0.95, flexible=False), busy("d0", "decode", 0.1, kv=5,
             flexible=False), busy("f1", "decode", 0.1, kv=5)),
    window_s=1.0,
)  # fmt: skip


async def test_a_flip_decision_writes_last_scaling_then_marks_the_pod(
    monkeypatch: pytest.MonkeyPatch, rpc: FakeWorkers
) -> None:
    kube, events, changed = await run(monkeypatch, PODS, SETTLED)
    assert changed
    (status,) = [c[1] for c in kube.calls if c[0] == "patch_status"]
    assert (status["lastScaling"]["prefill"], status["lastScaling"]["decode"]) == (2, 1)
    assert status["lastScaling"]["action"] == "flip"
    assert kube.calls[-1] == ("patch_pod", "f1", None, {"tandem.dev/flip-to": "prefill"})
    assert [c[0] for c in kube.calls] == ["patch_status", "patch_pod"]  # status first
    assert rpc.calls == []  # nothing is carried out in the same pass
    assert "RoleFlip" in {e.reason for e in events}


async def test_a_marked_pod_is_drained_switched_then_relabelled(
    monkeypatch: pytest.MonkeyPatch, rpc: FakeWorkers
) -> None:
    pods = [*PODS[:2], pod("f1", "decode", flexible=True, **{"tandem.dev/flip-to": "prefill"})]
    signals = PoolSignals(workers=SETTLED.workers, window_s=1.0)
    status = {"lastScaling": {"prefill": 2, "decode": 1}}
    kube, events, _ = await run(monkeypatch, pods, signals, status)
    address = "10.0.0.2:50051"
    assert rpc.calls == [("drain", address), ("set_role", address, "prefill")]
    assert (
        "patch_pod",
        "f1",
        {"tandem.dev/role": "prefill"},
        {"tandem.dev/flip-to": None},
    ) in kube.calls
    assert "RoleSwitched" in {e.reason for e in events}


async def test_a_drain_still_running_changes_nothing(
    monkeypatch: pytest.MonkeyPatch, rpc: FakeWorkers
) -> None:
    rpc.drained = False
    pods = [*PODS[:2], pod("f1", "decode", flexible=True, **{"tandem.dev/flip-to": "prefill"})]
    kube, _, _ = await run(monkeypatch, pods, SETTLED, {"lastScaling": {"prefill": 2, "decode": 1}})
    assert [c[0] for c in rpc.calls] == ["drain"]  # no SetRole before the drain is done
    assert not any(c[0] == "patch_pod" for c in kube.calls)
    assert not any("lastScaling" in c[1] for c in kube.calls if c[0] == "patch_status")


async def test_a_drained_pod_for_removal_gets_the_lowest_deletion_cost(
    monkeypatch: pytest.MonkeyPatch, rpc: FakeWorkers
) -> None:
    pods = [*PODS[:2], pod("f1", "decode", flexible=True, **{"tandem.dev/scale-down": "drain"})]
    kube, events, changed = await run(
        monkeypatch, pods, SETTLED, {"lastScaling": {"prefill": 1, "decode": 1}}
    )
    assert changed
    assert kube.calls[-1] == ("patch_pod", "f1", None, {
        "tandem.dev/scale-down": "drained",
        "controller.kubernetes.io/pod-deletion-cost": "-2147483648",
    })  # fmt: skip
    assert "WorkerRemoved" in {e.reason for e in events}


async def test_a_source_down_degrades_and_decides_nothing(
    monkeypatch: pytest.MonkeyPatch, rpc: FakeWorkers
) -> None:
    down = PoolSignals(workers=(), window_s=1.0, missing=("d0 /metrics (http://x): refused",))
    kube, events, _ = await run(monkeypatch, PODS, down)
    (status,) = [c[1] for c in kube.calls if c[0] == "patch_status"]
    assert "lastScaling" not in status
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "SignalsUnavailable" and "d0 /metrics" in degraded["message"]
    assert not any(c[0] == "patch_pod" for c in kube.calls)
    assert "SignalsUnavailable" in {e.reason for e in events}


async def test_no_decision_while_a_pod_is_still_coming(
    monkeypatch: pytest.MonkeyPatch, rpc: FakeWorkers
) -> None:
    # lastScaling wants 3 decode workers: the flexible Deployment has a pod not created yet.
    status = {"lastScaling": {"prefill": 1, "decode": 3}}
    kube, _, _ = await run(monkeypatch, PODS, SETTLED, status)
    assert not any("lastScaling" in c[1] for c in kube.calls if c[0] == "patch_status")
