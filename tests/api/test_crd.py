"""The generated CRD: committed files fresh, structural, named as the design says."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tandem.api.crd import crd, crd_yaml

ROOT = Path(__file__).resolve().parents[2]
FILES = (
    ROOT / "crds" / "inferencepools.tandem.dev.yaml",
    ROOT / "charts" / "tandem" / "crds" / "inferencepools.tandem.dev.yaml",
)


def test_committed_crds_are_fresh() -> None:
    for path in FILES:
        assert path.read_text() == crd_yaml(), f"{path} is stale: run `make crds`"


def test_gen_crds_check_mode_agrees() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "gen_crds.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_names() -> None:
    spec = crd()["spec"]
    assert spec["group"] == "tandem.dev"
    assert spec["names"]["plural"] == "inferencepools"
    assert spec["names"]["shortNames"] == ["tpool"]  # never infpool
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:3] == ["Model", "Prefill", "Decode"] and {"Ready", "Age"} <= set(columns)


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if "items" in schema:
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def _schema() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_schema_is_structural() -> None:
    for path, node in _nodes(_schema()):
        assert "type" in node, path
        assert not {"$ref", "anyOf", "oneOf", "allOf", "title", "$defs"} & set(node), path
        assert node.get("additionalProperties") is not False, path


def test_every_rule_message_names_a_field() -> None:
    rules = [
        (path, rule)
        for path, node in _nodes(_schema())
        for rule in node.get("x-kubernetes-validations", [])
    ]
    assert len(rules) >= 9  # 2 per role, budget, unique names, 3 durations, metadata.name
    for path, rule in rules:
        leaf = path.rsplit(".", 1)[-1]
        assert (
            leaf in rule["message"] or "spec." in rule["message"] or "metadata." in rule["message"]
        )


def _paths(doc: Any, prefix: str = "") -> set[str]:
    """Dotted field paths set in a manifest (list items share their list's path)."""
    out: set[str] = set()
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.add(f"{prefix}.{key}")
            out |= _paths(value, f"{prefix}.{key}")
    elif isinstance(doc, list):
        for item in doc:
            out.add(f"{prefix}[]")
            out |= _paths(item, f"{prefix}[]")
    return out


def test_full_example_sets_every_spec_field() -> None:
    example = yaml.safe_load((ROOT / "examples" / "inferencepool-full.yaml").read_text())
    used = _paths(example["spec"], ".spec")
    declared = {
        path
        for path, node in _nodes(_schema()["properties"]["spec"], ".spec")
        if path != ".spec" and "{}" not in path
    }
    missing = declared - used
    assert not missing, f"examples/inferencepool-full.yaml lacks {sorted(missing)}"
