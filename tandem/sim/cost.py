"""A worker's costs (frozen, loaded from the calibration's JSON).

Step times are linear in what a step does, as the calibration fits them:

- prefill step: base + per_token x new tokens + per_attn x attention pairs,
  where a chunk of n new tokens after c cached ones has n x (c + n/2) pairs;
- decode step: base + per_seq x batch + per_ctx_token x context tokens read;
- mixed step (colocated: decode rows ride along a prefill chunk): the prefill
  step with the decode rows counted as tokens, plus their context reads. The
  weights are read once per step, so only the decode rows' marginal cost is
  added; this is the interference that stretches a colocated decode step.

Transfers cost latency + bytes / rate per transport. Model load and role
flip are fixed times; a flip's drain is not in here (the simulator plays it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class CostError(ValueError):
    """A cost file that is not a valid cost model."""


@dataclass(frozen=True)
class Transport:
    name: str
    bytes_per_s: float
    latency_s: float = 0.0

    def seconds(self, nbytes: float) -> float:
        return self.latency_s + nbytes / self.bytes_per_s


@dataclass(frozen=True)
class Ceilings:
    """The device's own limits (measured where the calibration ran)."""

    matmul_flops: float  # dense matmul rate at the model's dtype
    memory_bytes_per_s: float  # device memory bandwidth (a large copy)
    memory_bytes: int  # device memory


@dataclass(frozen=True)
class CostModel:
    name: str
    device: str
    prefill_base_s: float
    prefill_per_token_s: float
    prefill_per_attn_s: float
    decode_base_s: float
    decode_per_seq_s: float
    decode_per_ctx_token_s: float
    kv_bytes_per_token: int
    weight_bytes: int
    flops_per_token: float  # 2 x parameters read per token (matmuls only)
    kv_capacity_tokens: int  # KV cache of one worker, in tokens
    max_num_batched_tokens: int  # the engine's per-step token budget
    max_num_seqs: int
    model_load_s: float
    role_flip_s: float
    ceilings: Ceilings
    transports: tuple[Transport, ...] = ()
    layers: int = (
        32  # KV ships layer by layer: the last layer's share of a transfer cannot overlap compute
    )
    provisional: str = ""  # "" when measured on this device; else what it was derived from
    fit_error: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in (
            "prefill_per_token_s",
            "decode_base_s",
            "kv_bytes_per_token",
            "kv_capacity_tokens",
        ):
            if not getattr(self, name) > 0:
                raise CostError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in (
            "prefill_base_s",
            "prefill_per_attn_s",
            "decode_per_seq_s",
            "decode_per_ctx_token_s",
        ):
            if getattr(self, name) < 0:
                raise CostError(f"{name} must be >= 0, got {getattr(self, name)} (refit the grid)")
        if self.max_num_batched_tokens < 1 or self.max_num_seqs < 1:
            raise CostError("max_num_batched_tokens and max_num_seqs must be >= 1")

    # ----- step times ------------------------------------------------------
    def prefill_s(self, tokens: int, attn_pairs: float) -> float:
        return (
            self.prefill_base_s
            + self.prefill_per_token_s * tokens
            + self.prefill_per_attn_s * attn_pairs
        )

    def decode_s(self, batch: int, context_tokens: float) -> float:
        return (
            self.decode_base_s
            + self.decode_per_seq_s * batch
            + self.decode_per_ctx_token_s * context_tokens
        )

    def step_s(
        self, prefill_tokens: int, attn_pairs: float, batch: int, context_tokens: float
    ) -> float:
        if prefill_tokens <= 0:
            return self.decode_s(batch, context_tokens)
        t = self.prefill_s(prefill_tokens + batch, attn_pairs)
        return t + self.decode_per_ctx_token_s * context_tokens

    def transport(self, name: str) -> Transport:
        for t in self.transports:
            if t.name == name:
                return t
        known = ", ".join(t.name for t in self.transports) or "none"
        raise CostError(f"no transport {name!r} in cost model {self.name} (has: {known})")

    # ----- physics ---------------------------------------------------------
    def violations(self) -> list[str]:
        """What this model claims beyond the device's limits (empty when sound)."""
        c, out = self.ceilings, []
        limit = c.matmul_flops / self.flops_per_token
        if 1.0 / self.prefill_per_token_s > limit:
            out.append(
                f"prefill {1 / self.prefill_per_token_s:.0f} tokens/s exceeds the matmul limit {limit:.0f}"
            )
        floor = self.weight_bytes / c.memory_bytes_per_s
        if self.decode_base_s + self.decode_per_seq_s < floor:
            out.append(
                f"decode step {self.decode_base_s:.3g}s is faster than reading the weights ({floor:.3g}s)"
            )
        kv_floor = self.kv_bytes_per_token / c.memory_bytes_per_s
        if self.decode_per_ctx_token_s < kv_floor:
            out.append(
                f"{self.decode_per_ctx_token_s:.3g}s per context token beats reading its KV ({kv_floor:.3g}s)"
            )
        need = self.weight_bytes + self.kv_capacity_tokens * self.kv_bytes_per_token
        if need > c.memory_bytes:
            out.append(
                f"weights + KV ({need / 2**30:.1f} GiB) exceed device memory ({c.memory_bytes / 2**30:.1f} GiB)"
            )
        return out

    # ----- JSON ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fit_error"] = dict(self.fit_error)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "cost model") -> CostModel:
        try:
            fields = dict(d)
            fields["ceilings"] = Ceilings(**fields["ceilings"])
            fields["transports"] = tuple(Transport(**t) for t in fields.get("transports", ()))
            fields["fit_error"] = dict(fields.get("fit_error", {}))
            return cls(**fields)
        except (KeyError, TypeError) as exc:
            raise CostError(f"{where}: not a cost model: {exc}") from None


def load(path: str | Path) -> CostModel:
    """A cost model from a calibration JSON (the model under its `cost` key, or bare)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CostError(f"{path}: cannot read a cost model: {exc}") from None
    return CostModel.from_dict(data.get("cost", data), str(path))


def builtin(name: str) -> CostModel:
    """A cost model shipped with Tandem (tandem/sim/data/NAME.json)."""
    path = Path(__file__).parent / "data" / f"{name}.json"
    if not path.exists():
        have = sorted(p.stem for p in path.parent.glob("*.json"))
        raise CostError(f"no built-in cost model {name!r} (have: {', '.join(have)})")
    return load(path)
