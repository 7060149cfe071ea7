"""Keep launched processes running: restart a crashed one with exponential
backoff (logged), and stop everything in order on the way out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Protocol

log = logging.getLogger(__name__)

#: A process that stayed up this long is healthy again: its backoff resets.
STABLE_AFTER_S = 60.0


class Supervised(Protocol):
    name: str

    def start(self) -> None: ...
    def poll(self) -> int | None: ...  # exit status, None while running
    def terminate(self) -> None: ...
    def kill(self) -> None: ...


class SupervisedWorker(Supervised, Protocol):
    address: str  # host:port of its gRPC WorkerService


def backoff_s(consecutive_crashes: int, base: float = 1.0, cap: float = 30.0) -> float:
    """Delay before restart number `consecutive_crashes` (1-based): 1, 2, 4, ... cap."""
    if consecutive_crashes < 1:
        return 0.0
    return float(min(cap, base * 2 ** (consecutive_crashes - 1)))


class Supervisor:
    def __init__(self, procs: Sequence[Supervised], poll_s: float = 0.5) -> None:
        self.procs = list(procs)
        self.poll_s = poll_s
        self.restarts: dict[str, int] = {p.name: 0 for p in self.procs}
        self._crashes: dict[str, int] = {p.name: 0 for p in self.procs}
        self._started: dict[str, float] = {p.name: time.monotonic() for p in self.procs}

    async def watch(self, stop: asyncio.Event) -> None:
        """Restart crashed processes until `stop` is set."""
        pending: dict[str, float] = {}  # name -> monotonic time to restart at
        while not stop.is_set():
            now = time.monotonic()
            for p in self.procs:
                if p.name in pending:
                    if now >= pending[p.name]:
                        del pending[p.name]
                        self._restart(p)
                    continue
                try:
                    code = p.poll()
                except Exception:
                    # A status read that fails (e.g. a slow Ray actor call) says
                    # nothing about the process: log it and look again next round.
                    log.exception("cannot read the status of %s", p.name)
                    continue
                if code is None:
                    if now - self._started[p.name] > STABLE_AFTER_S:
                        self._crashes[p.name] = 0
                    continue
                self._crashes[p.name] += 1
                delay = backoff_s(self._crashes[p.name])
                log.error("%s exited with status %s; restarting in %.0fs", p.name, code, delay)
                pending[p.name] = now + delay
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_s)

    def _restart(self, p: Supervised) -> None:
        self.restarts[p.name] += 1
        self._started[p.name] = time.monotonic()
        try:
            p.start()
            log.warning("%s restarted (restart #%d)", p.name, self.restarts[p.name])
        except Exception:
            log.exception("restarting %s failed", p.name)


async def stop_all(procs: Sequence[Supervised], timeout_s: float = 20.0) -> None:
    """SIGTERM every process, wait up to timeout_s for them to exit, then SIGKILL."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        await asyncio.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            log.warning("%s did not stop within %.0fs; killing it", p.name, timeout_s)
            p.kill()
