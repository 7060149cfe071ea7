"""The workers as the router sees them: discovery + polled load + what the
router itself has in flight on each, and which ones it found broken.

A worker whose call failed is marked down at once (requests stop going to it)
and comes back only after a later Load poll succeeds, which is the health check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tandem.router.discovery import Discovery, WorkerEndpoint
from tandem.router.errors import RouterError, Unavailable, WorkerDown
from tandem.router.selection import Load, WorkerView
from tandem.router.worker_client import ModelFacts, WorkerClient

log = logging.getLogger(__name__)

ClientFactory = Callable[[str, str], WorkerClient]


@dataclass
class _Worker:
    client: WorkerClient
    load: Load | None = None
    inflight: int = 0
    inflight_prefill_tokens: int = 0
    down_at: float | None = None  # time.monotonic() when a call failed; None = not known broken
    polled_ok: bool = False
    last_ok: float = 0.0  # time.monotonic() of the last answered poll


class WorkerRegistry:
    def __init__(
        self,
        discovery: Discovery,
        *,
        poll_s: float = 0.5,
        down_hold_s: float = 1.0,
        poll_timeout_s: float = 3.0,
        stale_s: float = 15.0,
        on_change: Callable[[], None] = lambda: None,
        client_factory: ClientFactory = WorkerClient,
    ) -> None:
        self._discovery = discovery
        self._poll_s = poll_s
        self._down_hold_s = down_hold_s
        self._poll_timeout_s = poll_timeout_s
        self._stale_s = stale_s
        self._on_change = on_change
        self._client_factory = client_factory
        self._workers: dict[str, _Worker] = {}
        self._endpoints: dict[str, WorkerEndpoint] = {}
        self._task: asyncio.Task[None] | None = None
        self.model: ModelFacts | None = None

    async def start(self) -> None:
        await self.poll()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.gather(*(w.client.close() for w in self._workers.values()), return_exceptions=True)

    def set_on_change(self, callback: Callable[[], None]) -> None:
        self._on_change = callback

    def views(self) -> list[WorkerView]:
        out = []
        block_size = self.model.block_size if self.model else 16
        for name, ep in self._endpoints.items():
            w = self._workers[name]
            up = ep.ready and w.polled_ok and w.down_at is None
            role = w.load.role if w.load is not None and w.load.role else ep.role
            out.append(
                WorkerView(name, ep.address, role, up, w.load, w.inflight, w.inflight_prefill_tokens, block_size)
            )
        return out

    def client(self, name: str) -> WorkerClient:
        return self._worker(name).client

    def _worker(self, name: str) -> _Worker:
        """A worker chosen a moment ago may have left discovery since (an await in
        between): that is a retryable 503, not an internal error."""
        w = self._workers.get(name)
        if w is None:
            raise Unavailable(f"worker {name} left the pool while the request was being routed")
        return w

    def mark_down(self, name: str, reason: str) -> None:
        w = self._workers.get(name)
        if w is not None and w.down_at is None:
            log.warning("worker %s marked down: %s", name, reason)
            w.down_at = time.monotonic()
            w.polled_ok = False

    @contextlib.contextmanager
    def track(self, name: str, prefill_tokens: int = 0) -> Iterator[Callable[[], None]]:
        """Count a request in flight on a worker; the yielded callable says its prefill is done."""
        w = self._worker(name)
        w.inflight += 1
        w.inflight_prefill_tokens += prefill_tokens
        pending = [prefill_tokens]

        def prefilled() -> None:
            w.inflight_prefill_tokens -= pending[0]
            pending[0] = 0

        try:
            yield prefilled
        finally:
            prefilled()
            w.inflight -= 1
            self._on_change()

    async def model_facts(self) -> ModelFacts:
        """The served model, from the first worker that answers Info."""
        if self.model is not None:
            return self.model
        errors = []
        for name in self._endpoints:
            try:
                info = await self._workers[name].client.info()
            except RouterError as exc:
                errors.append(str(exc))
                continue
            self.model = info.model
            return info.model
        raise Unavailable("no worker answered Info: " + ("; ".join(errors) or "no workers known"), retry_after_s=2)

    async def poll(self) -> None:
        """Sync with discovery and refresh every worker's load (the health check)."""
        snapshot = {ep.name: ep for ep in self._discovery.snapshot()}
        for name, ep in snapshot.items():
            w = self._workers.get(name)
            if w is None or w.client.address != ep.address:
                if w is not None:
                    await w.client.close()
                self._workers[name] = _Worker(self._client_factory(name, ep.address))
        gone = [self._workers.pop(n) for n in [n for n in self._workers if n not in snapshot]]
        # Publish the new endpoints before awaiting anything: views() pairs each endpoint
        # with its worker, and requests read it while the gone channels close.
        self._endpoints = snapshot
        for w in gone:
            await w.client.close()
        names = [n for n, ep in snapshot.items() if ep.ready]
        results = await asyncio.gather(*(self._poll_one(n) for n in names), return_exceptions=True)
        changed = any(r is True for r in results)
        if self.model is None and any(v.up for v in self.views()):
            with contextlib.suppress(RouterError):
                await self.model_facts()
        if changed:
            self._on_change()

    async def _poll_one(self, name: str) -> bool:
        """Refresh one worker; True when it came up. A refused connection takes it out
        at once; a slow answer (the engine is busy) only after `stale_s` of silence."""
        w = self._workers[name]
        was_up = w.polled_ok and w.down_at is None
        now = time.monotonic()
        try:
            load, _ = await w.client.load(timeout=self._poll_timeout_s)
        except WorkerDown:
            w.polled_ok = False
            return False
        except RouterError:
            if now - w.last_ok > self._stale_s:
                w.polled_ok = False
            return False
        w.load = load
        w.polled_ok = True
        w.last_ok = time.monotonic()
        if w.down_at is not None and w.last_ok - w.down_at >= self._down_hold_s:
            log.info("worker %s is back", name)
            w.down_at = None
        return not was_up and w.down_at is None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                await self.poll()
            except Exception:  # keep polling whatever one round hit
                log.exception("worker poll failed")
