"""The engine's configuration: one frozen dataclass, validated on creation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["prefill", "decode", "both"]
ROLES: tuple[Role, ...] = ("prefill", "decode", "both")


@dataclass(frozen=True)
class EngineConfig:
    model: str  # Hugging Face-format folder
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    block_size: int = 16
    num_kv_blocks: int | None = None  # else sized from kv_cache_bytes (or free memory)
    kv_cache_bytes: int | None = None
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 128
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    role: Role = "both"
    seed: int = 0
    reservation_ttl_s: float = 60.0  # unclaimed decode reservations are freed after this
    load_format: str = "safetensors"  # or "dummy": random weights of the config's shape (benchmarks)
    cuda_graph_max_batch: int = 128  # decode steps up to this batch replay CUDA graphs; 0 = eager
    # Traffic control (tandem.worker.scheduler, tandem.worker.step_budget).
    scheduling_policy: Literal["priority", "fcfs"] = "priority"
    priority_aging_s: float = 30.0  # after this long in the engine a request goes ahead of younger ones
    tpot_slo_s: float | None = None  # caps prefill next to running decodes; None = no cap
    min_prefill_tokens: int = 16  # prefill tokens per step even when decodes use up the TPOT SLO

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks must be >= 1, got {self.num_kv_blocks}")
        if self.load_format not in ("safetensors", "dummy"):
            raise ValueError(f"load_format must be safetensors or dummy, got {self.load_format!r}")
        if self.cuda_graph_max_batch < 0:
            raise ValueError(f"cuda_graph_max_batch must be >= 0, got {self.cuda_graph_max_batch}")
        if self.scheduling_policy not in ("priority", "fcfs"):
            raise ValueError(f"scheduling_policy must be priority or fcfs, got {self.scheduling_policy!r}")
        if not self.priority_aging_s > 0:
            raise ValueError(f"priority_aging_s must be > 0, got {self.priority_aging_s}")
        if self.tpot_slo_s is not None and not self.tpot_slo_s > 0:
            raise ValueError(f"tpot_slo_s must be > 0, got {self.tpot_slo_s}")
        if self.min_prefill_tokens < 1:
            raise ValueError(f"min_prefill_tokens must be >= 1, got {self.min_prefill_tokens}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
