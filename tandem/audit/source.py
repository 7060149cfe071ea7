"""Where the audit's two snapshots come from: /metrics pages, or a Prometheus server.

Both give the same thing, a `Snapshot` per target at two moments, so one
pure pipeline (tandem.planner.scrape) serves both.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tandem.planner.scrape import Labels, MetricsError, Snapshot, parse

TIMEOUT_S = 5.0
# Labels Prometheus adds to every series of a target: they name the target, not the sample.
TARGET_LABELS = frozenset(
    {"instance", "job", "pod", "namespace", "service", "endpoint", "container"}
)


class SourceError(Exception):
    """A target or server that did not answer, or answered something else."""


@dataclass(frozen=True)
class Scrape:
    """One moment: name -> snapshot per target, and the targets that did not answer."""

    routers: Mapping[str, Snapshot]
    workers: Mapping[str, Snapshot]
    missing: tuple[str, ...]


def fetch(url: str) -> Snapshot:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            return parse(resp.read().decode())
    except MetricsError as exc:
        raise SourceError(f"{url}: {exc}") from None
    except OSError as exc:
        raise SourceError(f"{url}: {exc}") from None


def scrape_pages(routers: Sequence[str], workers: Sequence[str]) -> Scrape:
    """Every /metrics page at once (in threads); a page that fails is named in `missing`."""
    urls = [*routers, *workers]
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(urls)))) as pool:
        results = list(pool.map(_try_fetch, urls))
    got = dict(zip(urls, results, strict=True))
    missing = tuple(f"{u} ({r})" for u, r in got.items() if isinstance(r, str))
    return Scrape(
        routers={u: r for u in routers if isinstance(r := got[u], Snapshot)},
        workers={u: r for u in workers if isinstance(r := got[u], Snapshot)},
        missing=missing,
    )


def _try_fetch(url: str) -> Snapshot | str:
    try:
        return fetch(url)
    except SourceError as exc:
        return str(exc).removeprefix(f"{url}: ")


def prometheus_query(base: str, query: str, at: float) -> list[Mapping[str, object]]:
    q = urllib.parse.urlencode({"query": query, "time": f"{at:.3f}"})
    url = f"{base.rstrip('/')}/api/v1/query?{q}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            body = json.loads(resp.read().decode())
    except (OSError, ValueError) as exc:
        raise SourceError(f"Prometheus at {base}: {exc}") from None
    if body.get("status") != "success" or body.get("data", {}).get("resultType") != "vector":
        raise SourceError(f"Prometheus at {base}: unexpected answer {str(body)[:200]}")
    return list(body["data"]["result"])


def snapshots_from_vector(
    result: Sequence[Mapping[str, object]], target_label: str = "instance"
) -> tuple[dict[str, Snapshot], dict[str, Snapshot]]:
    """A Prometheus instant vector of Tandem's series -> (routers, workers) by target.

    A target is a router if it exports tandem_router_* series, else a worker."""
    by_target: dict[str, dict[tuple[str, Labels], float]] = {}
    for item in result:
        metric = item.get("metric")
        value = item.get("value")
        if not isinstance(metric, Mapping) or not isinstance(value, list) or len(value) != 2:
            raise SourceError(f"Prometheus: malformed sample {str(item)[:200]}")
        labels = {str(k): str(v) for k, v in metric.items()}
        name = labels.pop("__name__", "")
        target = labels.get(target_label, "")
        own = tuple(sorted((k, v) for k, v in labels.items() if k not in TARGET_LABELS))
        by_target.setdefault(target, {})[(name, own)] = float(value[1])
    routers: dict[str, Snapshot] = {}
    workers: dict[str, Snapshot] = {}
    for target, samples in by_target.items():
        is_router = any(n.startswith("tandem_router_") for n, _ in samples)
        (routers if is_router else workers)[target] = Snapshot(samples)
    return routers, workers


def scrape_prometheus(base: str, selector: str, at: float) -> Scrape:
    query = (
        "{" + ",".join(['__name__=~"tandem_(router|worker)_.+"', *filter(None, [selector])]) + "}"
    )
    routers, workers = snapshots_from_vector(prometheus_query(base, query, at))
    return Scrape(routers, workers, ())
