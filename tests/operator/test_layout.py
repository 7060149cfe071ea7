"""The autoscaled layout: fixed minimums + one flexible Deployment, sized from the last
decision and the pods' marks; pools without autoscaling render as before."""

from __future__ import annotations

from typing import Any

import pytest

from tandem.api.v1alpha1 import InferencePoolSpec
from tandem.operator.layout import Counts, desired_counts, scale_of
from tandem.operator.objects import PoolRef
from tandem.operator.render import render

POOL = PoolRef(name="llama", namespace="serving", uid="uid-1", generation=3)


def spec(**overrides: Any) -> InferencePoolSpec:
    base: dict[str, Any] = {
        "model": {"name": "m", "uri": "pvc://models/llama"},
        "prefill": {"replicas": 2, "minReplicas": 1, "maxReplicas": 4},
        "decode": {"replicas": 3, "minReplicas": 1, "maxReplicas": 6},
        "autoscaling": {"enabled": True, "maxGPUs": 8, "roleSwitching": True},
    }
    return InferencePoolSpec.model_validate({**base, **overrides})


def objects(s: InferencePoolSpec, status: dict[str, Any] | None = None,
            pods: tuple[dict[str, Any], ...] = ()) -> dict[tuple[str, str], dict[str, Any]]:  # fmt: skip
    out = render(POOL, s, "img:1", scale_of(s, status or {}, pods))
    return {(o["kind"], o["metadata"]["name"]): o for o in out}


def flexible_pod(name: str, **annotations: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"tandem.dev/flexible": "true"},
                         "annotations": annotations}}  # fmt: skip


def test_objects_of_an_autoscaled_pool() -> None:
    got = objects(spec())
    deployments = {name for kind, name in got if kind == "Deployment"}
    assert deployments == {"llama-router", "llama-prefill", "llama-decode", "llama-flexible"}
    assert got[("Deployment", "llama-prefill")]["spec"]["replicas"] == 1  # the minimum
    assert got[("Deployment", "llama-decode")]["spec"]["replicas"] == 1
    assert got[("Deployment", "llama-flexible")]["spec"]["replicas"] == 3  # (2-1) + (3-1)


def test_flexible_deployment_selects_without_the_role_label() -> None:
    flex = objects(spec())[("Deployment", "llama-flexible")]
    assert flex["spec"]["selector"] == {
        "matchLabels": {"tandem.dev/pool": "llama", "tandem.dev/flexible": "true"}
    }
    labels = flex["spec"]["template"]["metadata"]["labels"]
    assert labels["tandem.dev/role"] == "pending"  # in no per-role Service until assigned
    assert labels["tandem.dev/flexible"] == "true"
    container = flex["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:3] == ["worker", "--role", "decode"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert flex["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_sizes_follow_the_last_decision_clamped_to_the_bounds() -> None:
    s = spec()
    assert desired_counts(s, {}) == Counts(2, 3)
    assert desired_counts(s, {"lastScaling": {"prefill": 3, "decode": 4}}) == Counts(3, 4)
    assert desired_counts(s, {"lastScaling": {"prefill": 9, "decode": 0}}) == Counts(4, 1)
    got = objects(s, {"lastScaling": {"prefill": 3, "decode": 4}})
    assert got[("Deployment", "llama-flexible")]["spec"]["replicas"] == 5
    assert got[("Deployment", "llama-prefill")]["spec"]["replicas"] == 1


def test_a_pod_draining_for_removal_keeps_its_replica_until_drained() -> None:
    s = spec()
    status = {"lastScaling": {"prefill": 2, "decode": 2}}  # one decode worker less
    draining = (flexible_pod("a", **{"tandem.dev/scale-down": "drain"}),)
    drained = (flexible_pod("a", **{"tandem.dev/scale-down": "drained"}),)
    flex = ("Deployment", "llama-flexible")
    assert objects(s, status, draining)[flex]["spec"]["replicas"] == 3
    assert objects(s, status, drained)[flex]["spec"]["replicas"] == 2
    assert objects(s, status)[flex]["spec"]["replicas"] == 2


def test_lower_bounds_never_delete_a_pod_before_its_drain() -> None:
    """A smaller maxReplicas lowers the desired count at once; the flexible pods stay
    until the operator has drained one and marked it."""
    s = spec(decode={"replicas": 1, "minReplicas": 1, "maxReplicas": 1})
    status = {"lastScaling": {"prefill": 2, "decode": 3}}
    pods = (flexible_pod("a"), flexible_pod("b"), flexible_pod("c"))
    flex = ("Deployment", "llama-flexible")
    assert objects(s, status, pods)[flex]["spec"]["replicas"] == 3
    gone = (flexible_pod("a", **{"tandem.dev/scale-down": "drained"}), *pods[1:])
    assert objects(s, status, gone)[flex]["spec"]["replicas"] == 2


@pytest.mark.parametrize(
    ("counts", "budgets"),
    [
        ((1, 1), {}),
        ((2, 1), {"llama-prefill": 1}),
        ((3, 4), {"llama-prefill": 2, "llama-decode": 3}),
    ],
)
def test_disruption_budgets_count_pods_by_role(counts: tuple[int, int],
                                               budgets: dict[str, int]) -> None:  # fmt: skip
    status = {"lastScaling": {"prefill": counts[0], "decode": counts[1]}}
    got = objects(spec(), status)
    pdbs = {name: o["spec"] for (kind, name), o in got.items() if kind == "PodDisruptionBudget"}
    assert {n: p["minAvailable"] for n, p in pdbs.items()} == budgets
    assert all("maxUnavailable" not in p for p in pdbs.values())


def test_pool_without_autoscaling_keeps_its_layout() -> None:
    s = spec(autoscaling={"enabled": False, "maxGPUs": 8})
    got = objects(s, {"lastScaling": {"prefill": 4, "decode": 6}})
    assert ("Deployment", "llama-flexible") not in got
    assert got[("Deployment", "llama-prefill")]["spec"]["replicas"] == 2
    assert got[("Deployment", "llama-decode")]["spec"]["replicas"] == 3
    assert render(POOL, s, "img:1") == render(POOL, s, "img:1", scale_of(spec(), {}, ()))
