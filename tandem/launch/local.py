"""Launch Tandem processes as children of this process.

Each child runs in its own session (a Ctrl-C in the terminal reaches only the
launcher, which then stops the children in order) and dies with the launcher
even if that is killed outright (tandem.launch.child sets PDEATHSIG). Child
stdout goes to our stderr, so our stdout carries only what `tandem serve`
prints for the user.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence

from tandem.launch.spec import WorkerSpec, free_ports

log = logging.getLogger(__name__)


class LocalProcess:
    """One `tandem ...` child process; `start` again after it exits to restart it."""

    def __init__(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = tuple(argv)
        self.env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError(f"{self.name} is already running (pid {self._proc.pid})")
        cmd = [sys.executable, "-m", "tandem.launch.child", str(os.getpid()), *self.argv]
        self._proc = subprocess.Popen(
            cmd,
            env={**os.environ, **self.env},
            stdin=subprocess.DEVNULL,
            stdout=sys.stderr.fileno(),
            start_new_session=True,
        )
        log.info("started %s (pid %d): tandem %s", self.name, self._proc.pid, " ".join(self.argv))

    def poll(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def terminate(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


class LocalWorker(LocalProcess):
    """A worker child on 127.0.0.1 (or `host`) at a port fixed for its lifetime,
    so a restarted worker is found where the router expects it."""

    def __init__(self, spec: WorkerSpec, host: str = "127.0.0.1") -> None:
        self.port, self.metrics_port = free_ports(2, host)
        self.address = f"{host}:{self.port}"
        self.metrics_url = f"http://{host}:{self.metrics_port}/metrics"
        argv = spec.argv(host, self.port, self.metrics_port)
        super().__init__(spec.name, argv, spec.env())


class LocalLauncher:
    name = "local"

    def worker(self, spec: WorkerSpec) -> LocalWorker:
        return LocalWorker(spec)

    def close(self) -> None:
        """Nothing to release: the children are stopped by the supervisor."""
