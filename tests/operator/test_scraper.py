"""The scrape source against a real HTTP server: two passes make rates; a pod that does
not answer, or answers something that is not Tandem's metrics, is a source down."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from tandem.operator.scraper import Scraper
from tests.router.processes import free_port


def worker_page(busy_s: float, role: str = "decode") -> str:
    return (
        f'tandem_worker_role{{role="{role}"}} 1.0\n'
        "tandem_worker_draining 0.0\n"
        f"tandem_worker_busy_seconds_total {busy_s}\n"
        f'tandem_worker_requests_running{{role="{role}"}} 3.0\n'
        "tandem_worker_kv_blocks_used 20.0\ntandem_worker_kv_blocks_total 100.0\n"
    )


ROUTER = (
    "# TYPE tandem_router_ttft_seconds histogram\n"
    'tandem_router_ttft_seconds_bucket{{priority="default",le="0.5"}} {a}\n'
    'tandem_router_ttft_seconds_bucket{{priority="default",le="+Inf"}} {b}\n'
    'tandem_router_ttft_seconds_count{{priority="default"}} {b}\n'
    'tandem_router_ttft_seconds_sum{{priority="default"}} 1.0\n'
)


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, dict[str, str]]]:
    pages: dict[str, str] = {}

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=pages[request.match_info["name"]])

    app = web.Application()
    app.router.add_get("/{name}/metrics", page)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", pages
    await runner.cleanup()


async def test_two_passes_make_a_busy_fraction_and_percentiles(
    server: tuple[str, dict[str, str]],
) -> None:
    url, pages = server
    scraper = Scraper()
    workers = [("w", f"{url}/w/metrics")]
    routers = [("r", f"{url}/r/metrics")]
    async with aiohttp.ClientSession() as session:
        pages.update(w=worker_page(10.0), r=ROUTER.format(a=0, b=0))
        first = await scraper.collect(session, workers, routers, frozenset(), now=100.0)
        pages.update(w=worker_page(11.5), r=ROUTER.format(a=9, b=10))
        second = await scraper.collect(session, workers, routers, frozenset(), now=102.0)
    (w1,) = first.workers
    assert w1.busy is None and first.missing == ()  # one scrape: no rate yet
    (w2,) = second.workers
    assert (w2.role, w2.busy, w2.running, w2.kv_usage) == ("decode", 0.75, 3, 0.2)
    assert second.window_s == 2.0 and second.requests == 10
    assert second.ttft_p99_s == 0.5  # the 10th lies in +Inf: its lower bound, as PromQL says


async def test_a_pod_that_does_not_answer_is_missing(server: tuple[str, dict[str, str]]) -> None:
    url, pages = server
    pages["bad"] = "this is not prometheus text {"
    dead = f"http://127.0.0.1:{free_port()}/metrics"
    targets = [("gone", dead), ("bad", f"{url}/bad/metrics"), ("none", None)]
    async with aiohttp.ClientSession() as session:
        got = await Scraper().collect(session, targets, [], frozenset(), now=1.0)
    assert got.workers == ()
    assert [m.split(" ")[0].rstrip(":") for m in got.missing] == ["gone", "bad", "none"]
