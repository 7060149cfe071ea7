"""The InferencePool CustomResourceDefinition, derived from the pydantic models.

Pydantic writes JSON Schema; the API server wants a *structural* OpenAPI v3
schema: no `$ref`, no `anyOf` for optional fields, a `type` on every node, no
`title`/`additionalProperties: false`. `structural()` does that translation
and nothing else, so the models stay the only place a field is declared.
"""

from __future__ import annotations

from typing import Any

import yaml

from tandem.api import v1alpha1 as api

# Keys of JSON Schema that a structural CRD schema accepts as they are.
_KEPT = {
    "type",
    "description",
    "default",
    "enum",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "required",
    "x-kubernetes-validations",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}


def structural(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Translate one pydantic JSON Schema node (and its children) to structural form."""
    defs = schema.get("$defs", {}) if defs is None else defs
    node = dict(schema)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}
    if "anyOf" in node:  # Optional[X] is anyOf [X, null]: the field is optional, not nullable
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"unions are not expressible in a CRD schema: {options}")
        inner = options[0]
        if "$ref" in inner:
            inner = {**defs[inner["$ref"].rsplit("/", 1)[-1]], **inner}
            inner.pop("$ref")
        node = {**inner, **{k: v for k, v in node.items() if k != "title"}}
    if node.get("default", 0) is None:
        node.pop("default")
    out: dict[str, Any] = {k: v for k, v in node.items() if k in _KEPT}
    if "properties" in node:
        out["type"] = "object"
        out["properties"] = {
            name: structural(child, defs) for name, child in node["properties"].items()
        }
    if isinstance(node.get("additionalProperties"), dict):
        out["type"] = "object"
        out["additionalProperties"] = structural(node["additionalProperties"], defs)
    if "items" in node:
        out["items"] = structural(node["items"], defs)
    if "const" in node:
        out["enum"] = [node["const"]]
    if "type" not in out:
        raise ValueError(f"schema node without a type: {node}")
    return out


_NAME_RULE = {
    "rule": (
        f"self.metadata.name.size() <= {api.MAX_POOL_NAME} && "
        f"self.metadata.name.matches('{api.POOL_NAME_PATTERN}')"
    ),
    "message": (
        f"metadata.name must be a DNS-1035 label of at most {api.MAX_POOL_NAME} characters "
        "(it prefixes the pool's Service names)"
    ),
}


def openapi_schema() -> dict[str, Any]:
    spec = structural(api.InferencePoolSpec.model_json_schema(by_alias=True, mode="validation"))
    status = structural(api.InferencePoolStatus.model_json_schema(by_alias=True))
    status["properties"]["conditions"]["x-kubernetes-list-type"] = "map"
    status["properties"]["conditions"]["x-kubernetes-list-map-keys"] = ["type"]
    return {
        "type": "object",
        "description": "A model served with prefill and decode on separate, balanced pools.",
        "required": ["spec"],
        "x-kubernetes-validations": [_NAME_RULE],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def _printer_columns() -> list[dict[str, Any]]:
    return [
        {"name": "Model", "type": "string", "jsonPath": ".spec.model.name"},
        {
            "name": "Prefill",
            "type": "string",
            "jsonPath": ".status.prefill.ready",
            "description": "Ready/desired prefill workers",
        },
        {
            "name": "Decode",
            "type": "string",
            "jsonPath": ".status.decode.ready",
            "description": "Ready/desired decode workers",
        },
        {
            "name": "Router",
            "type": "string",
            "jsonPath": ".status.router.ready",
            "priority": 1,
            "description": "Ready/desired routers",
        },
        {
            "name": "Ready",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        },
        {
            "name": "Reason",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
            "priority": 1,
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition manifest."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "tandem"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": list(api.CATEGORIES),
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _printer_columns(),
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


HEADER = "# GENERATED by hack/gen_crds.py from tandem/api/v1alpha1.py. Do not edit.\n"


def crd_yaml() -> str:
    """The CRD as the committed YAML file's text (stable key order, for diffing)."""
    return HEADER + yaml.safe_dump(crd(), sort_keys=True, width=100)
