"""Worker metrics, named as in the shared vocabulary (docs/architecture.md)."""

from __future__ import annotations

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
