"""InferencePool models: defaults, bounds and cross-field rules, each naming its field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from tandem.api.v1alpha1 import InferencePool, InferencePoolSpec, parse_duration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def minimal() -> dict[str, Any]:
    return {"model": {"name": "m", "uri": "pvc://models/m"}}


def with_(path: str, value: Any) -> dict[str, Any]:
    """A minimal spec with one dotted path set."""
    spec = copy.deepcopy(minimal())
    node = spec
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return spec


def test_defaults_of_minimal_spec() -> None:
    spec = InferencePoolSpec.model_validate(minimal())
    assert spec.model.dtype == "bfloat16"
    assert (spec.router.replicas, spec.prefill.replicas, spec.decode.replicas) == (1, 1, 1)
    assert (spec.prefill.min_replicas, spec.decode.min_replicas) == (0, 1)
    assert spec.prefill.gpus_per_replica == 1
    assert spec.disaggregation.min_prompt_tokens == 256
    assert spec.kv_transfer.transport == "auto"
    assert spec.autoscaling is None and spec.traffic is None


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_parse(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        pool = InferencePool.model_validate(doc)
        assert pool.spec.model.name


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (with_("decode.replicas", 5) | {}, None),  # valid: no max
        (with_("decode", {"replicas": 5, "maxReplicas": 4}), "spec.decode.replicas"),
        (with_("prefill", {"replicas": 0, "minReplicas": 1}), "spec.prefill.replicas"),
        (
            with_("prefill", {"replicas": 2, "minReplicas": 3, "maxReplicas": 2}),
            "spec.prefill.minReplicas",
        ),
        (
            {
                **minimal(),
                "prefill": {"minReplicas": 2, "replicas": 2, "gpusPerReplica": 2},
                "decode": {"minReplicas": 2, "replicas": 2, "gpusPerReplica": 1},
                "autoscaling": {"maxGPUs": 5},
            },
            "spec.autoscaling.maxGPUs",
        ),
        (
            with_("traffic.priorityClasses", [{"name": "a", "priority": 1}] * 2),
            "spec.traffic.priorityClasses",
        ),
        (with_("autoscaling.ttftP99", "0s"), "ttftP99"),
        (with_("autoscaling.tpotP99", "fast"), "tpotP99"),
        (with_("autoscaling.metrics", {"source": "prometheus"}), "metrics.prometheus"),
        (with_("autoscaling.metrics", {"interval": "500ms"}), "metrics.interval"),
        (
            with_(
                "autoscaling.metrics", {"source": "prometheus", "prometheus": {"url": "prom:9090"}}
            ),
            "url",
        ),
        (with_("autoscaling.targetBusyPercent", 0), "targetBusyPercent"),
        (with_("autoscaling.targetKVUsagePercent", 101), "targetKVUsagePercent"),
        (with_("autoscaling.tolerancePercent", 100), "tolerancePercent"),
        (with_("autoscaling.scaleUpWindow", "soon"), "scaleUpWindow"),
        (with_("autoscaling.cooldown", "-5s"), "cooldown"),
        (with_("autoscaling.scaleUpStep", 0), "scaleUpStep"),
        (with_("autoscaling.scaleDownPercent", 0), "scaleDownPercent"),
        (with_("autoscaling.scaleDownWindow", "0s"), None),  # zero windows are allowed
        (
            with_("traffic.priorityClasses", [{"name": "a", "priority": 1, "ttftSLO": "0ms"}]),
            "ttftSLO",
        ),
        (with_("model.uri", "s3://bucket/m"), "uri"),
        (with_("model.uri", "hostPath://relative"), "uri"),
        (with_("model.dtype", "int8"), "dtype"),
        (with_("decode.replicas", -1), "replicas"),
        (with_("decode.gpusPerReplica", 17), "gpusPerReplica"),
        (with_("kvTransfer.transport", "carrier-pigeon"), "transport"),
        (with_("router.bogus", 1), "bogus"),
        # Tolerations the API server would refuse in the Deployment's pod template.
        (
            with_("decode.tolerations", [{"key": "gpu", "operator": "Exists", "value": "x"}]),
            "value",
        ),
        (with_("prefill.tolerations", [{"operator": "Equal", "value": "x"}]), "key"),
        (with_("router.tolerations", [{"key": "k", "tolerationSeconds": 30}]), "tolerationSeconds"),
    ],
)
def test_rules_name_the_field(spec: dict[str, Any], field: str | None) -> None:
    if field is None:
        InferencePoolSpec.model_validate(spec)
        return
    with pytest.raises(ValidationError) as err:
        InferencePoolSpec.model_validate(spec)
    assert field in str(err.value)


def test_budget_that_fits_the_minimums_is_accepted() -> None:
    spec = {
        **minimal(),
        "prefill": {"minReplicas": 2, "replicas": 2, "gpusPerReplica": 2},
        "decode": {"minReplicas": 2, "replicas": 2, "gpusPerReplica": 1},
        "autoscaling": {"maxGPUs": 6},
    }
    assert InferencePoolSpec.model_validate(spec).autoscaling.max_gpus == 6  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("name", "ok"),
    [("llama", True), ("a" * 50, True), ("a" * 51, False), ("9lives", False), ("Upper", False)],
)
def test_pool_name(name: str, ok: bool) -> None:
    doc = {"metadata": {"name": name}, "spec": minimal()}
    if ok:
        assert InferencePool.model_validate(doc).metadata["name"] == name
    else:
        with pytest.raises(ValidationError, match=r"metadata\.name"):
            InferencePool.model_validate(doc)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("50ms", 0.05), ("1m30s", 90.0), ("1.5h", 5400.0), ("250us", 0.00025)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "-1s", "1 s", "1d"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_round_trip_uses_wire_names() -> None:
    spec = InferencePoolSpec.model_validate(with_("decode", {"replicas": 3, "maxReplicas": 4}))
    wire = spec.model_dump(by_alias=True, exclude_none=True)
    assert wire["decode"]["maxReplicas"] == 4 and "max_replicas" not in wire["decode"]
    assert InferencePoolSpec.model_validate(wire) == spec
