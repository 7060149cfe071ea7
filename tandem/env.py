"""Every environment variable Tandem reads, in one place.

Processes read these once at start-up (through `tandem.cli` or a component's
config builder); nothing else in the package touches `os.environ` for a
`TANDEM_` name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Where `tandem serve` keeps the tiny default model and other per-user state.
TANDEM_HOME = "TANDEM_HOME"
#: Log level for every Tandem process (DEBUG, INFO, WARNING, ...).
TANDEM_LOG_LEVEL = "TANDEM_LOG_LEVEL"
#: Cache folder of the local Kubernetes control-plane binaries.
TANDEM_KUBE_CACHE = "TANDEM_KUBE_CACHE"
#: Set to 0 to skip tests that need the local Kubernetes control plane.
TANDEM_K8S_TESTS = "TANDEM_K8S_TESTS"
#: Pod name and namespace, injected by the operator's manifests (downward API).
TANDEM_POD_NAME = "TANDEM_POD_NAME"
TANDEM_POD_NAMESPACE = "TANDEM_POD_NAMESPACE"
#: Pool name a router or worker pod belongs to (set by the operator).
TANDEM_POOL = "TANDEM_POOL"

ALL = (
    TANDEM_HOME,
    TANDEM_LOG_LEVEL,
    TANDEM_KUBE_CACHE,
    TANDEM_K8S_TESTS,
    TANDEM_POD_NAME,
    TANDEM_POD_NAMESPACE,
    TANDEM_POOL,
)


@dataclass(frozen=True)
class Environment:
    home: Path
    log_level: str
    kube_cache: Path
    k8s_tests: bool
    pod_name: str | None
    pod_namespace: str | None
    pool: str | None


def read(environ: dict[str, str] | None = None) -> Environment:
    """Parse the `TANDEM_` variables (pure: pass a dict in tests)."""
    env = dict(os.environ) if environ is None else environ
    cache_root = Path(env.get("XDG_CACHE_HOME", str(Path.home() / ".cache")))
    return Environment(
        home=Path(env.get(TANDEM_HOME, str(cache_root / "tandem"))),
        log_level=env.get(TANDEM_LOG_LEVEL, "INFO").upper(),
        kube_cache=Path(env.get(TANDEM_KUBE_CACHE, str(cache_root / "tandem" / "kube"))),
        k8s_tests=env.get(TANDEM_K8S_TESTS, "1") not in ("0", "false", "no"),
        pod_name=env.get(TANDEM_POD_NAME),
        pod_namespace=env.get(TANDEM_POD_NAMESPACE),
        pool=env.get(TANDEM_POOL),
    )
