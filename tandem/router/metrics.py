"""The router's Prometheus metrics, named as in the shared vocabulary.

They live in their own `CollectorRegistry` per router so that several routers
in one process (tests, `tandem serve`) don't collide on the default registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tandem_router_requests", "Requests by priority class and outcome", ["priority", "outcome"], registry=r
        )
        self.ttft = Histogram(
            "tandem_router_ttft_seconds", "Time to first token", ["priority"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.tpot = Histogram(
            "tandem_router_tpot_seconds", "Time per output token after the first", ["priority"],
            buckets=_TPOT_BUCKETS, registry=r,
        )
        self.e2e = Histogram(
            "tandem_router_e2e_seconds", "End-to-end request latency", ["priority"], buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "tandem_router_queue_depth", "Requests waiting in the router's queue", ["priority"], registry=r
        )
        self.prefill_queue_depth = Gauge(
            "tandem_router_prefill_queue_depth",
            "Requests waiting for a prompt slot on the prefill workers",
            ["priority"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "tandem_router_queue_wait_seconds",
            "Time spent in the router's queues before a slot was granted",
            ["priority", "phase"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.shed = Counter(
            "tandem_router_shed",
            "Requests shed by traffic control (429 or 503), by reason: deadline, queue_full, displaced, timeout",
            ["priority", "reason"],
            registry=r,
        )
        self.slo = Counter(
            "tandem_router_slo_requests",
            "Completed requests of classes with an SLO, by latency (ttft, tpot) and whether it was met",
            ["priority", "slo", "outcome"],
            registry=r,
        )
        self.workers_up = Gauge("tandem_router_workers_up", "Workers the router can reach", ["role"], registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
