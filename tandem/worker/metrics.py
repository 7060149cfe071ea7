"""Worker metrics, named as in the shared vocabulary (docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

REQUESTS_WAITING = Gauge("tandem_worker_requests_waiting", "Requests queued in the engine", ["role"])
REQUESTS_RUNNING = Gauge("tandem_worker_requests_running", "Requests holding KV blocks", ["role"])
KV_BLOCKS_TOTAL = Gauge("tandem_worker_kv_blocks_total", "KV blocks in the pool")
KV_BLOCKS_USED = Gauge("tandem_worker_kv_blocks_used", "KV blocks referenced by requests")
TOKENS = Counter("tandem_worker_tokens_total", "Tokens computed", ["phase"])
BUSY_SECONDS = Counter(
    "tandem_worker_busy_seconds_total", "Seconds with model work on the device (rate() = utilization)"
)
STEP_SECONDS = Histogram(
    "tandem_worker_step_seconds",
    "Engine step duration",
    ["phase"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
PREEMPTIONS = Counter("tandem_worker_preemptions_total", "Requests preempted (recomputed later)")
ROLE = Gauge("tandem_worker_role", "1 for the role the worker serves now, 0 for the others", ["role"])
DRAINING = Gauge("tandem_worker_draining", "1 while the worker admits no new work (drain, role flip)")
ROLE_SWITCHES = Counter(
    "tandem_worker_role_switches", "Role changes carried out (drain, switch, rejoin)", ["to_role"]
)


KV_BLOCKS_RESERVED = Gauge(
    "tandem_worker_kv_blocks_reserved",
    "KV blocks held by reservations whose KV is still being prefilled elsewhere",
)


def watch_state(
    role: Callable[[], str], draining: Callable[[], bool], reserved: Callable[[], int]
) -> None:
    """Read role, draining and reserved blocks at scrape time, so a scaler never sees a
    stale value."""
    for r in ("prefill", "decode", "both"):
        ROLE.labels(r).set_function(lambda r=r: 1.0 if role() == r else 0.0)  # type: ignore[misc]
    DRAINING.set_function(lambda: 1.0 if draining() else 0.0)
    KV_BLOCKS_RESERVED.set_function(lambda: float(reserved()))
