"""Objects the engine hands across its boundary (frozen)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class StepOutput:
    """One request's progress in one engine step."""

    request_id: str
    new_token_ids: tuple[int, ...]
    finished: bool
    finish_reason: str | None  # "stop" | "length" | "abort" | "prefilled" | "error"
    num_prompt_tokens: int
    num_cached_tokens: int  # prompt tokens served from the prefix cache
    error: str | None = None


@dataclass(frozen=True)
class ModelInfo:
    name: str
    max_model_len: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    block_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    kv_dtype: str  # e.g. "float32", "bfloat16"


@dataclass(frozen=True)
class LoadInfo:
    role: str
    waiting: int
    running: int
    kv_blocks_total: int
    kv_blocks_used: int
    kv_blocks_free: int
    draining: bool


@dataclass(frozen=True)
class KVChunk:
    """One layer's K/V for a run of a request's blocks."""

    request_id: str
    layer: int
    first_block: int  # index into the request's block list, not a pool block id
    k: torch.Tensor  # [n, block_size, num_kv_heads, head_dim], a private copy
    v: torch.Tensor
    # On CUDA: an event recorded on the engine's stream right after k and v
    # were made; readers wait for it alone (see kv_staging). None on CPU.
    ready: Any = field(default=None, compare=False)

    @property
    def num_blocks(self) -> int:
        return int(self.k.shape[0])


@dataclass(frozen=True)
class Reservation:
    request_id: str
    block_ids: tuple[int, ...]  # decode-side pool block ids covering the prompt
    skip_blocks: int  # leading blocks already present here (prefix cache): not shipped
