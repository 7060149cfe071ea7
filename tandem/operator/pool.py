"""Reading an InferencePool object: its identity and its validated spec (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from tandem.api import v1alpha1 as api
from tandem.operator.objects import PoolRef


class InvalidSpec(ValueError):
    """The spec cannot be served; the message names the offending field."""


def pool_ref(body: Mapping[str, Any]) -> PoolRef:
    meta = body["metadata"]
    return PoolRef(
        name=meta["name"],
        namespace=meta["namespace"],
        uid=meta["uid"],
        generation=int(meta.get("generation") or 1),
    )


def _where(loc: tuple[int | str, ...]) -> str:
    path = "spec"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def parse_spec(body: Mapping[str, Any]) -> api.InferencePoolSpec:
    """The validated spec, or InvalidSpec naming each bad field (as `spec.decode.replicas`)."""
    try:
        return api.InferencePoolSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            text = str(err["msg"]).removeprefix("Value error, ")
            where = _where(tuple(err["loc"]))
            # Cross-field rules already name their fields; don't prefix them twice.
            problems.append(text if "spec." in text else f"{where}: {text}")
        raise InvalidSpec("; ".join(problems)) from None
