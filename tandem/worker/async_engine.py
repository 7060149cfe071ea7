"""An Engine driven by a background thread, with an asyncio-facing API.

The step thread owns the GPU work; every touch of engine state happens under
one lock, so callers from the event loop (gRPC handlers) and from transport
threads (KV import) never race with a step. Outputs travel back to the loop
through `call_soon_threadsafe` into one queue per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence

from tandem.sampling import SamplingParams
from tandem.worker.config import EngineConfig
from tandem.worker.engine import Engine
from tandem.worker.errors import Draining, UnknownRequest
from tandem.worker.outputs import KVChunk, LoadInfo, ModelInfo, Reservation, StepOutput
from tandem.worker.request import NO_URGENCY, Urgency

log = logging.getLogger(__name__)


class AsyncEngine:
    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self._engine = engine
        self._loop = loop
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._streams: dict[str, asyncio.Queue[StepOutput]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="tandem-engine", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, config: EngineConfig) -> AsyncEngine:
        """Load the model and start stepping. Call inside a running event loop."""
        return cls(Engine(config), asyncio.get_running_loop())

    @property
    def model_info(self) -> ModelInfo:
        return self._engine.model_info

    @property
    def role(self) -> str:
        return self._engine.role

    @property
    def alive(self) -> bool:
        """False once the step thread has stopped (shutdown, or a fatal error):
        health checks then report NOT_SERVING so routers stop sending work."""
        return self._thread.is_alive() and not self._stopped

    @property
    def device(self) -> str:
        return str(self._engine.runner.device)

    @property
    def engine(self) -> Engine:
        """The wrapped engine, for tests and introspection; hold no references across awaits."""
        return self._engine

    # ----- the step thread -----------------------------------------------
    def _run(self) -> None:
        try:
            self._loop_steps()
        except BaseException:
            # step() already turns model errors into per-request errors; reaching
            # here is an engine bug. Fail every open stream rather than hang it.
            log.exception("engine step thread died")
            # Before failing the open streams: from here on no new one is opened.
            self._stopped = True
            self._loop.call_soon_threadsafe(self._fail_all, "engine stopped unexpectedly")

    def _fail_all(self, message: str) -> None:
        for rid, q in list(self._streams.items()):
            q.put_nowait(StepOutput(rid, (), True, "error", 0, 0, message))

    def _loop_steps(self) -> None:
        while not self._stopped:
            with self._lock:
                busy = self._engine.has_work()
                if not busy:
                    # step() expires reservations, but an engine that holds only
                    # reservations never steps: expire them here, or their blocks
                    # leak and drain() waits for them forever.
                    self._engine._expire_reservations()
                outputs = self._engine.step() if busy else []
                idle = self._engine.idle()
            if outputs or idle:
                self._loop.call_soon_threadsafe(self._dispatch, outputs, idle)
            if not busy:
                self._wake.wait(timeout=0.5)
                self._wake.clear()
            elif self._engine.last_step is None and not outputs:
                # Work exists but none could run (blocks held elsewhere): don't spin.
                self._wake.wait(timeout=0.005)
                self._wake.clear()

    def _dispatch(self, outputs: list[StepOutput], idle: bool) -> None:
        for out in outputs:
            q = self._streams.get(out.request_id)
            if q is not None:
                q.put_nowait(out)
        if idle:
            self._idle.set()

    def _submit(self, fn: Callable[[], object]) -> object:
        with self._lock:
            result = fn()
            self._idle.clear()
        self._wake.set()
        return result

    # ----- requests ------------------------------------------------------
    async def generate(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        urgency: Urgency = NO_URGENCY,
    ) -> AsyncIterator[StepOutput]:
        """Colocated generation; the last output has finished=True. Stopping
        the iteration early aborts the request and frees its blocks."""
        q = self._open(request_id)
        try:
            self._submit(
                lambda: self._engine.add_request(
                    request_id, prompt_token_ids, params, urgency=urgency
                )
            )
        except BaseException:
            self._streams.pop(request_id, None)
            raise
        async for out in self._drain_stream(request_id, q):
            yield out

    async def prefill(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        kv_sink: Callable[[KVChunk], None],
        skip_blocks: int = 0,
        urgency: Urgency = NO_URGENCY,
    ) -> StepOutput:
        """Run the prompt, hand KV to `kv_sink` layer by layer (called on the
        engine thread: it must only enqueue), return the first token."""
        q = self._open(request_id)
        try:
            self._submit(
                lambda: self._engine.add_request(
                    request_id,
                    prompt_token_ids,
                    params,
                    kv_sink=kv_sink,
                    skip_blocks=skip_blocks,
                    urgency=urgency,
                )
            )
        except BaseException:
            self._streams.pop(request_id, None)
            raise
        last: StepOutput | None = None
        async for out in self._drain_stream(request_id, q):
            last = out
        assert last is not None
        return last

    def reserve(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        urgency: Urgency = NO_URGENCY,
    ) -> Reservation:
        self._check_alive()
        return self._submit(
            lambda: self._engine.reserve(request_id, prompt_token_ids, params, urgency)
        )  # type: ignore[return-value]

    def import_kv(self, chunk: KVChunk) -> None:
        """Thread-safe: transports call this from their own threads."""
        with self._lock:
            self._engine.import_kv(chunk)

    async def decode(self, request_id: str, first_token_id: int) -> AsyncIterator[StepOutput]:
        """Continue a reserved request whose KV has been imported."""
        q = self._open(request_id)
        try:
            final = self._submit(lambda: self._engine.start_decode(request_id, first_token_id))
        except BaseException:
            self._streams.pop(request_id, None)
            raise
        if isinstance(final, StepOutput):
            self._streams.pop(request_id, None)
            yield final
            return
        async for out in self._drain_stream(request_id, q):
            yield out

    def abort(self, request_id: str) -> bool:
        found = bool(self._submit(lambda: self._engine.abort(request_id)))
        q = self._streams.pop(request_id, None)
        if q is not None:
            # Callers may be off the loop (the Cancel RPC runs this in a thread):
            # an asyncio queue must only be touched on the loop's own thread.
            self._loop.call_soon_threadsafe(
                q.put_nowait, StepOutput(request_id, (), True, "abort", 0, 0)
            )
        return found

    def _check_alive(self) -> None:
        # Nothing would ever step a request admitted now: refuse it (UNAVAILABLE,
        # so the router retries elsewhere) instead of leaving its stream hanging.
        if not self.alive:
            raise Draining("the engine has stopped and admits no new work")

    def _open(self, request_id: str) -> asyncio.Queue[StepOutput]:
        self._check_alive()
        if request_id in self._streams:
            from tandem.sampling import InvalidRequest

            raise InvalidRequest("request_id", f"{request_id!r} is already in use")
        q: asyncio.Queue[StepOutput] = asyncio.Queue()
        self._streams[request_id] = q
        return q

    async def _drain_stream(
        self, request_id: str, q: asyncio.Queue[StepOutput]
    ) -> AsyncIterator[StepOutput]:
        finished = False
        try:
            while not finished:
                out = await q.get()
                finished = out.finished
                yield out
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                with self._lock:
                    self._engine.abort(request_id)

    # ----- introspection and lifecycle -----------------------------------
    def load(self, prompt_token_ids: Sequence[int] | None = None) -> tuple[LoadInfo, int]:
        with self._lock:
            return self._engine.load(prompt_token_ids)

    async def drain(self) -> None:
        """Stop admitting work and wait until in-flight requests finish."""
        with self._lock:
            self._engine.draining = True
            idle = self._engine.idle()
        # A dead step thread finishes nothing (its streams were failed already).
        while not idle and self.alive:
            self._idle.clear()
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout=0.5)
            with self._lock:
                idle = self._engine.idle()

    async def set_role(self, role: str) -> None:
        """Drain, switch role, admit again. The model stays loaded."""
        try:
            await self.drain()
            with self._lock:
                self._engine.set_role(role)
        finally:
            # Also when the drain was cancelled (the caller gave up) or the switch
            # was refused: the engine serves on, in whichever role it now has.
            with self._lock:
                self._engine.draining = False

    def resume(self) -> None:
        with self._lock:
            self._engine.draining = False

    async def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        await asyncio.to_thread(self._thread.join, 5.0)


__all__ = ["AsyncEngine", "UnknownRequest"]
