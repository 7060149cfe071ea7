"""`tandem operator`: run the InferencePool operator (kopf) against the current cluster."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import tandem

DEFAULT_IMAGE = f"ghcr.io/tandem-serve/tandem:{tandem.__version__}"


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...]  # empty: every namespace
    default_image: str
    liveness: str | None
    metrics_port: int
    kubeconfig: str | None
    pod_addresses: str | None = None  # JSON file of pod -> address overrides

    def __post_init__(self) -> None:
        if not self.default_image:
            raise ValueError("--default-image must not be empty")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"--metrics-port {self.metrics_port} is not a TCP port (0 disables)")
        if self.liveness is not None and not self.liveness.startswith("http://"):
            raise ValueError(f"--liveness {self.liveness!r} must be an http:// URL")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "operator",
        help="run the InferencePool operator",
        description="Reconcile InferencePools (tandem.dev/v1alpha1) into routers and workers.",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    parser.add_argument(
        "--default-image", default=DEFAULT_IMAGE, help="image when spec.image is unset"
    )
    parser.add_argument("--liveness", default=None, help="e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--metrics-port", type=int, default=0, help="Prometheus port; 0 disables")
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster)")
    parser.add_argument(
        "--pod-addresses",
        default=None,
        metavar="FILE",
        help="JSON file mapping <namespace>/<pod> to {grpc, metrics} addresses, for an "
        "operator that cannot reach pod IPs (see tandem/operator/addresses.py); re-read "
        "when it changes",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        config = OperatorConfig(
            namespaces=tuple(args.namespace),
            default_image=args.default_image,
            liveness=args.liveness,
            metrics_port=args.metrics_port,
            kubeconfig=args.kubeconfig,
            pod_addresses=args.pod_addresses,
        )
    except ValueError as exc:
        raise SystemExit(f"tandem operator: {exc}") from None
    return run(config)


def run(config: OperatorConfig) -> int:
    import kopf
    from prometheus_client import start_http_server

    import tandem.operator.handlers  # noqa: F401  (registers the handlers with kopf)

    if config.kubeconfig:
        # kopf's own login and the kubernetes client both read this variable.
        os.environ["KUBECONFIG"] = config.kubeconfig
    if config.metrics_port:
        start_http_server(config.metrics_port)
    kopf.run(
        standalone=True,  # one replica (Recreate strategy); no kopf peering CRDs needed
        clusterwide=not config.namespaces,
        namespaces=config.namespaces,
        liveness_endpoint=config.liveness,
        memo=kopf.Memo(
            default_image=config.default_image,
            kubeconfig=config.kubeconfig,
            namespaces=config.namespaces,
            pod_addresses=Path(config.pod_addresses) if config.pod_addresses else None,
        ),
    )
    return 0
