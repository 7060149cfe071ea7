"""Signals by scraping the pool's own pods (the default source; no Prometheus needed).

Every pass fetches the /metrics of each Ready worker and router; the previous
pass's snapshots (kept in memory, one pass back only) turn counters into rates
over the time between the two, via `tandem.planner.scrape.pool_signals`. A pod
scraped for the first time has no busy fraction yet (the planner waits for a
second scrape); a Ready pod that does not answer is named in
`PoolSignals.missing`, and the planner then decides nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp

from tandem.planner import PoolSignals
from tandem.planner.scrape import MetricsError, Snapshot, parse, pool_signals, worker_signal

FETCH_TIMEOUT_S = 3.0
NOTHING = Snapshot({})


async def fetch(session: aiohttp.ClientSession, url: str) -> Snapshot:
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
    async with session.get(url, timeout=timeout) as answer:
        if answer.status != 200:
            raise MetricsError(f"HTTP {answer.status}")
        return parse(await answer.text())


async def _fetch_all(
    session: aiohttp.ClientSession, targets: Sequence[tuple[str, str | None]]
) -> tuple[dict[str, Snapshot], list[str]]:
    async def one(name: str, url: str | None) -> Snapshot | str:
        if url is None:
            return f"{name}: no address"
        try:
            return await fetch(session, url)
        except (aiohttp.ClientError, TimeoutError, MetricsError) as exc:
            return f"{name} /metrics ({url}): {type(exc).__name__} {exc}".strip()

    got = await asyncio.gather(*(one(n, u) for n, u in targets))
    snaps = {n: g for (n, _), g in zip(targets, got, strict=True) if isinstance(g, Snapshot)}
    return snaps, [g for g in got if isinstance(g, str)]


class Scraper:
    """One pool's scrape history: the snapshots of the previous pass."""

    def __init__(self) -> None:
        self._before: dict[str, Snapshot] = {}
        self._at: float | None = None

    async def collect(
        self,
        session: aiohttp.ClientSession,
        workers: Sequence[tuple[str, str | None]],
        routers: Sequence[tuple[str, str | None]],
        fixed: frozenset[str],
        now: float,
    ) -> PoolSignals:
        """`workers`/`routers`: (pod name, /metrics URL); `now` on a monotonic clock."""
        snaps, missing = await _fetch_all(session, [*workers, *routers])
        window = now - self._at if self._at is not None else 0.0
        rows = []
        for name, _ in workers:
            if name not in snaps:
                continue
            row = (name, self._before.get(name, NOTHING), snaps[name])
            try:
                worker_signal(*row, window)  # a page without Tandem's gauges is a source down
            except MetricsError as exc:
                missing.append(str(exc))
                continue
            rows.append(row)
        pairs = [
            (self._before[n], snaps[n]) for n, _ in routers if n in snaps and n in self._before
        ]
        self._before, self._at = snaps, now
        return pool_signals(rows, pairs, window, missing=missing, fixed=fixed)
