"""Test helpers for the operator against the local control plane: polling with deadlines,
JSON reads through kubectl, and the operator as a subprocess (`tandem operator`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tests.devcluster_plugin import DevCluster

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
#: helm renders offline as if for this server (its built-in default is far older than the
#: chart's kubeVersion); installs use the real server's version.
KUBE_VERSION = "v1.37.2"


def wait_for(
    check: Callable[[], T | None],
    timeout: float,
    what: str,
    context: Callable[[], str] = lambda: "",
) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.1
    last: T | None = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{context()}")
        time.sleep(delay)  # a poll interval, not a wait for an outcome
        delay = min(delay * 1.5, 1.0)


def get_json(cluster: DevCluster, *args: str) -> Any:
    result = cluster.kubectl("get", *args, "-o", "json", check=False)
    if result.returncode != 0:
        return None
    return json.loads(result.stdout)


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or ():
        if c.get("type") == kind:
            return dict(c)
    return {}


class OperatorProcess:
    """`tandem operator` watching one namespace, as the given kubeconfig's identity."""

    def __init__(
        self,
        cluster: DevCluster,
        kubeconfig: Path,
        namespace: str,
        log: Path,
        extra: Sequence[str] = (),
    ) -> None:
        self.cluster, self.kubeconfig, self.namespace, self.log = (
            cluster,
            kubeconfig,
            namespace,
            log,
        )
        self.extra = tuple(extra)  # more `tandem operator` flags
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        argv = [
            sys.executable, "-m", "tandem.cli", "operator",
            "--kubeconfig", str(self.kubeconfig),
            "--namespace", self.namespace,
            "--default-image", "tandem:test",
            *self.extra,
        ]  # fmt: skip
        env = {**self.cluster.env(self.kubeconfig), "TANDEM_LOG_LEVEL": "INFO"}
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        with self.log.open("ab") as out:
            out.write(f"\n===== start {self.starts}\n".encode())
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env
            )
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL: no clean-up, as when a node dies under the operator."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "----- operator log (tail)\n" + "\n".join(text.splitlines()[-lines:])
