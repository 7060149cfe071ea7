"""`tandem operator` arguments and config checks (no cluster)."""

from __future__ import annotations

import argparse

import pytest

from tandem.operator.command import OperatorConfig, register
from tandem.operator.kube import KubeError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["operator", *argv])


def test_defaults_watch_all_namespaces() -> None:
    args = parse()
    assert args.namespace == [] and args.metrics_port == 0 and args.kubeconfig is None
    assert args.default_image.startswith("ghcr.io/tandem-serve/tandem:")


def test_namespaces_repeat() -> None:
    assert parse("-n", "a", "--namespace", "b").namespace == ["a", "b"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"default_image": ""}, "--default-image"),
        ({"metrics_port": 70000}, "--metrics-port"),
        ({"liveness": "0.0.0.0:8080"}, "--liveness"),
    ],
)
def test_config_rejects(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {
        "namespaces": (),
        "default_image": "img",
        "liveness": None,
        "metrics_port": 0,
        "kubeconfig": None,
    }
    with pytest.raises(ValueError, match=message):
        OperatorConfig(**{**base, **kwargs})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "transient"),
    [(0, True), (403, True), (409, True), (429, True), (500, True), (503, True),
     (400, False), (422, False)],
)  # fmt: skip
def test_kube_error_classification(status: int, transient: bool) -> None:
    assert KubeError(status, "x").transient is transient


def test_kube_error_can_be_chained() -> None:
    with pytest.raises(KubeError) as err:
        try:
            raise ConnectionError("refused")
        except ConnectionError as exc:
            raise KubeError(0, "refused") from exc
    assert str(err.value) == "HTTP 0: refused" and err.value.__cause__ is not None
