"""Reading pool bodies: identity, and invalid specs named by field."""

from __future__ import annotations

from typing import Any

import pytest

from tandem.operator.pool import InvalidSpec, parse_spec, pool_ref
from tandem.operator.status import invalid_spec_status


def body(spec: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": "p", "namespace": "ns", "uid": "u", "generation": 4}
    return {"metadata": meta, "spec": spec}


def test_pool_ref() -> None:
    ref = pool_ref(body({}))
    assert (ref.name, ref.namespace, ref.uid, ref.generation) == ("p", "ns", "u", 4)


def test_parse_spec_ok() -> None:
    spec = parse_spec(
        body({"model": {"name": "m", "uri": "hostPath:///m"}, "decode": {"replicas": 2}})
    )
    assert spec.decode.replicas == 2


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({}, "spec.model: Field required"),
        ({"model": {"name": "m", "uri": "ftp://x"}}, "spec.model.uri:"),
        ({"model": {"name": "m", "uri": "pvc://m"}, "decode": {"replicas": "two"}}, "spec.decode.replicas:"),
        ({"model": {"name": "m", "uri": "pvc://m"}, "decode": {"replicas": 3, "maxReplicas": 2}},
         "spec.decode.replicas must lie between"),
        ({"model": {"name": "m", "uri": "pvc://m"},
          "traffic": {"priorityClasses": [{"name": "a", "priority": 1, "ttftSLO": "0s"}]}},
         "spec.traffic.priorityClasses[0].ttftSLO: must be a positive duration"),
    ],
)  # fmt: skip
def test_invalid_spec_names_field(spec: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        parse_spec(body(spec))
    assert named in str(err.value)


def test_invalid_spec_status() -> None:
    status = invalid_spec_status(4, "spec.model.uri: bad")
    ready = status["conditions"][0]
    assert ready == {
        "type": "Ready",
        "status": "False",
        "reason": "InvalidSpec",
        "message": "spec.model.uri: bad",
        "observedGeneration": 4,
    }
    assert status["observedGeneration"] == 4
