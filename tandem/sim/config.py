"""What one simulation run is asked to do (frozen, validated once)."""

from __future__ import annotations

import math
from dataclasses import dataclass

POLICIES = ("colocated", "static", "adaptive")


@dataclass(frozen=True)
class SimConfig:
    gpus: int
    policy: str  # colocated | static | adaptive
    prefill_workers: int = 0  # static: the split; adaptive: the starting split
    ttft_slo_s: float = 2.0
    tpot_slo_s: float = 0.1
    interval_s: float = 15.0  # the planner's scrape window and decision period
    unit_tokens: int = 128  # KV accounting granularity (divides the 512-token prefix block)
    min_prompt_tokens: int = (
        256  # the router's default: shorter uncached prompts run on the decode worker
    )
    max_inflight_per_worker: int = 64  # the router's default
    queue_timeout_s: float = 30.0  # the router's admission queue timeout
    shed: bool = False  # deadline admission, with the TTFT SLO as every request's deadline
    gpus_per_node: int = 8  # prefill and decode workers on one node ship KV over cuda_ipc
    transport: str = "auto"  # auto: cuda_ipc (or shm) within a node, grpc across; or one name
    shortlist: int = 16  # pools larger than this show selection the least-loaded few
    keep_gpus: bool = True  # adaptive holds all N GPUs: the planner's removals are not carried out
    drain_timeout_s: float = 600.0  # a flip's drain ends here even with streams left (counted)

    def __post_init__(self) -> None:
        if self.gpus < 1:
            raise ValueError(f"gpus must be >= 1, got {self.gpus}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.policy != "colocated":
            if self.gpus < 2:
                raise ValueError(f"a {self.policy} split needs at least 2 GPUs")
            if not 1 <= self.prefill_workers <= self.gpus - 1:
                raise ValueError(
                    f"prefill workers must be in 1..{self.gpus - 1} for {self.gpus} GPUs, got {self.prefill_workers}"
                )
        for name in ("ttft_slo_s", "tpot_slo_s", "interval_s", "queue_timeout_s"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be > 0, got {v}")
        if self.unit_tokens < 1 or 512 % self.unit_tokens:
            raise ValueError(f"unit_tokens must divide 512, got {self.unit_tokens}")
