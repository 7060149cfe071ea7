from __future__ import annotations

import pytest

from tandem.router.errors import BadRequest
from tandem.router.priority import (
    PriorityClass,
    default_class,
    parse_classes,
    parse_duration,
    resolve,
)


@pytest.mark.parametrize(("text", "seconds"), [("1s", 1.0), ("250ms", 0.25), ("0.5", 0.5), ("2m", 120.0)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_parse_classes() -> None:
    assert parse_classes("interactive:100:1s, batch:10") == (
        PriorityClass("interactive", 100, 1.0), PriorityClass("batch", 10, None)
    )


@pytest.mark.parametrize(
    ("spec", "words"),
    [("", "at least one"), ("a", "NAME:PRIORITY"), ("a:x", "integer"), ("a:1,a:2", "unique"),
     ("a:1:soon", "duration"), ("a:1:0s", "> 0"), ("a b:1", "alphanumeric")],
)
def test_bad_specs(spec: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_classes(spec)


def test_resolve_header_body_default() -> None:
    classes = parse_classes("interactive:100:1s,batch:10")
    default = default_class(classes)
    assert default.name == "batch"
    assert resolve(classes, default, {}, None).name == "batch"
    assert resolve(classes, default, {}, "interactive").name == "interactive"
    assert resolve(classes, default, {"x-tandem-priority": "batch"}, "interactive").name == "batch"
    with pytest.raises(BadRequest, match="unknown priority class 'vip'"):
        resolve(classes, default, {}, "vip")
    assert default_class(classes, "interactive").name == "interactive"
    with pytest.raises(ValueError):
        default_class(classes, "nope")
