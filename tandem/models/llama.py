"""The Llama family in PyTorch over a paged KV cache: Llama (incl. Llama 3
rope scaling), Mistral, Qwen2 (QKV bias) and Qwen3 (QK norm).

Works on a flat batch: all scheduled tokens of all sequences in one [T, ...]
tensor, with `AttentionMetadata` telling attention where each sequence's
tokens and cache blocks are. Q/K/V and gate/up projections are fused into one
matmul each at load time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

from tandem.kernels import ops
from tandem.models.attention import AttentionMetadata, rope_store_attend
from tandem.models.config import ModelConfig, ModelFormatError
from tandem.models.rope import cos_sin_tables


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return ops.rms_norm(x, self.weight, self.eps, residual)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=cfg.o_proj_bias)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,  # [T, hidden]
        positions: torch.Tensor,  # [T]
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        t = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(t, self.num_heads, self.head_dim)
        k = k.view(t, self.num_kv_heads, self.head_dim)
        v = v.view(t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q = self.q_norm(q.reshape(-1, self.head_dim))[0].view_as(q)
            k = self.k_norm(k.reshape(-1, self.head_dim))[0].view_as(k)
        o = rope_store_attend(
            self.layer_idx, q, k, v, positions, cos, sin, kv_cache[0], kv_cache[1], meta, self.scale
        )
        return self.o_proj(o.reshape(t, self.q_size))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(ops.silu_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(
        self,
        h: torch.Tensor,
        residual: torch.Tensor | None,
        positions: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, residual = self.input_layernorm(h, residual)
        h = self.self_attn(h, positions, cos, sin, kv_cache, meta)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig, max_positions: int) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = (
            None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        )
        self.max_positions = max_positions
        self.cos: torch.Tensor = torch.empty(0)
        self.sin: torch.Tensor = torch.empty(0)

    def init_rope(self, device: torch.device) -> None:
        self.cos, self.sin = cos_sin_tables(self.config, self.max_positions, device)

    def forward(
        self,
        input_ids: torch.Tensor,  # [T]
        positions: torch.Tensor,  # [T]
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [T, hidden]
        h = self.embed_tokens(input_ids)
        residual: torch.Tensor | None = None
        for layer, kv in zip(self.layers, kv_caches, strict=True):
            h, residual = layer(h, residual, positions, self.cos, self.sin, kv, meta)
        h, _ = self.norm(h, residual)
        return h

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [N, hidden] -> [N, vocab] fp32
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return torch.nn.functional.linear(hidden, weight).float()

    # ----- weights -------------------------------------------------------
    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], source: str) -> None:
        """Copy Hugging Face-named tensors into the fused parameters; every
        parameter must be written exactly once."""
        params = dict(self.named_parameters())
        written: set[str] = set()
        for name, tensor in weights:
            target = _target(name, self.config)
            if target is None:
                continue
            pname, rows = target
            if pname not in params:
                raise ModelFormatError(f"{source}: unexpected tensor {name!r} for this architecture")
            param = params[pname]
            dst = param.data if rows is None else param.data[rows[0] : rows[1]]
            if tuple(dst.shape) != tuple(tensor.shape):
                raise ModelFormatError(
                    f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(dst.shape)}"
                )
            dst.copy_(tensor)
            written.add(pname if rows is None else f"{pname}[{rows[0]}:{rows[1]}]")
        missing = [n for n in _expected_writes(self) if n not in written]
        if missing:
            raise ModelFormatError(f"{source}: missing tensors for {missing[:5]}{' ...' if len(missing) > 5 else ''}")


_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def _target(name: str, cfg: ModelConfig) -> tuple[str, tuple[int, int] | None] | None:
    """Map an HF tensor name to (our parameter name, row slice) or None to skip."""
    if name.endswith("rotary_emb.inv_freq"):
        return None
    if name == "model.embed_tokens.weight":
        return "embed_tokens.weight", None
    if name == "model.norm.weight":
        return "norm.weight", None
    if name == "lm_head.weight":
        return (None if cfg.tie_word_embeddings else ("lm_head.weight", None))
    m = _LAYER.match(name)
    if m is None:
        return name, None  # reported as unexpected by the caller
    i, rest = m.group(1), m.group(2)
    q = cfg.num_attention_heads * cfg.head_dim
    kv = cfg.num_key_value_heads * cfg.head_dim
    inter = cfg.intermediate_size
    fused = {
        "self_attn.q_proj": ("self_attn.qkv_proj", (0, q)),
        "self_attn.k_proj": ("self_attn.qkv_proj", (q, q + kv)),
        "self_attn.v_proj": ("self_attn.qkv_proj", (q + kv, q + 2 * kv)),
        "mlp.gate_proj": ("mlp.gate_up_proj", (0, inter)),
        "mlp.up_proj": ("mlp.gate_up_proj", (inter, 2 * inter)),
    }
    module, _, kind = rest.rpartition(".")
    if module in fused:
        pname, rows = fused[module]
        return f"layers.{i}.{pname}.{kind}", rows
    return f"layers.{i}.{rest}", None


def _expected_writes(model: LlamaForCausalLM) -> list[str]:
    cfg = model.config
    q = cfg.num_attention_heads * cfg.head_dim
    kv = cfg.num_key_value_heads * cfg.head_dim
    inter = cfg.intermediate_size
    out = []
    for name, _ in model.named_parameters():
        if name.endswith("qkv_proj.weight") or name.endswith("qkv_proj.bias"):
            out += [f"{name}[0:{q}]", f"{name}[{q}:{q + kv}]", f"{name}[{q + kv}:{q + 2 * kv}]"]
        elif name.endswith("gate_up_proj.weight"):
            out += [f"{name}[0:{inter}]", f"{name}[{inter}:{2 * inter}]"]
        else:
            out.append(name)
    return out
