"""`tandem serve --autoscale`: the loop that runs the planner over local workers.

Every interval it scrapes each worker's and the router's /metrics over HTTP,
turns the last two rounds into the planner's signals, calls `plan`, and carries
out flips by calling the worker's SetRole (the worker drains: it admits nothing
new while its in-flight streams finish, then switches; the model stays loaded).
The router sees the new role, and the drain before it, in the worker's Load
answer. Decisions and state changes are logged one line each (tandem.launch.scaling).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import grpc

from tandem.launch.scaling import (
    ROUTER,
    AutoscaleConfig,
    LogState,
    Round,
    Scrape,
    actions,
    log_lines,
    parsed,
    window,
)
from tandem.planner import Decision, Flip, PlannerState, plan
from tandem.rpc.v1 import worker_pb2, worker_pb2_grpc

log = logging.getLogger("tandem.serve")

SCRAPE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Member:
    """One worker the loop may flip: its name, gRPC address and /metrics URL."""

    name: str
    address: str
    metrics_url: str


class Autoscaler:
    def __init__(
        self, config: AutoscaleConfig, members: Sequence[Member], router_metrics_url: str
    ) -> None:
        self.config = config
        self.policy = config.policy(len(members))
        self.members = {m.name: m for m in members}
        self.router_metrics_url = router_metrics_url
        self.state = PlannerState()
        self.decisions: list[Decision] = []  # every decision that changed something
        self._logged = LogState()
        self._flips: set[asyncio.Task[None]] = set()
        self._flipping: set[str] = set()  # workers whose SetRole is in flight

    async def run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            before = parsed(await self._scrape(session))
            while not await _sleep_until_stopped(stop, self.config.interval_s):
                after = parsed(await self._scrape(session))
                try:
                    self.step(before, after)
                except Exception:  # the loop outlives one bad round; serving goes on
                    log.exception("autoscale: round failed; no decision this round")
                before = after
        for task in list(self._flips):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def step(self, before: Round, after: Round) -> Decision:
        signals = window(before, after, tuple(self.members))
        decision = plan(self.policy, signals, self.state, after.at)
        todo = actions(decision)
        if todo.flips:
            self.state = decision.state
            self.decisions.append(decision)
            for f in todo.flips:
                self._start_flip(f)
        else:
            # Nothing carried out: keep the history, not the planner's "last change".
            self.state = PlannerState(decision.state.recommendations, self.state.last_change_at)
        self._logged, lines = log_lines(self._logged, decision, todo.held)
        for line in lines:
            log.info("%s", line)
        return decision

    async def _scrape(self, session: aiohttp.ClientSession) -> Scrape:
        targets = {n: m.metrics_url for n, m in self.members.items()}
        targets[ROUTER] = self.router_metrics_url
        names = list(targets)
        got = await asyncio.gather(*(_fetch(session, targets[n]) for n in names))
        at = time.monotonic()
        texts = {n: text for n, (text, _) in zip(names, got, strict=True) if text is not None}
        errors = {n: err for n, (_, err) in zip(names, got, strict=True) if err is not None}
        return Scrape(at, texts, errors)

    def _start_flip(self, f: Flip) -> None:
        if f.worker in self._flipping:  # its drain has not shown in /metrics yet
            log.warning("autoscale: %s is already switching role; not flipping it again", f.worker)
            return
        self._flipping.add(f.worker)
        task = asyncio.get_running_loop().create_task(self._flip(f))
        self._flips.add(task)
        task.add_done_callback(self._flips.discard)

    async def _flip(self, f: Flip) -> None:
        member = self.members[f.worker]
        t0 = time.monotonic()
        try:
            role = await set_role(member.address, f.to_role, self.config.flip_timeout_s)
        except grpc.aio.AioRpcError as exc:
            log.error(
                "autoscale: flip %s -> %s failed: %s %s",
                f.worker,
                f.to_role,
                exc.code().name,
                exc.details(),
            )
            return
        log.info(
            "autoscale: %s is now %s (drained and switched in %.1fs)",
            f.worker,
            role,
            time.monotonic() - t0,
        )


async def set_role(address: str, role: str, timeout_s: float) -> str:
    """SetRole on one worker: it drains, switches and admits again; the new role."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        reply = await stub.SetRole(worker_pb2.SetRoleRequest(role=role), timeout=timeout_s)
    return str(reply.role)


async def _fetch(session: aiohttp.ClientSession, url: str) -> tuple[str | None, str | None]:
    try:
        async with session.get(url) as resp:
            if resp.status != 200:
                return None, f"HTTP {resp.status}"
            return await resp.text(), None
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


async def _sleep_until_stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds`; True if `stop` was set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
