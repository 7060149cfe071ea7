"""Tiny random-weight models in Hugging Face format, for tests and the
zero-setup demo.

The folder is a real checkpoint in miniature: `config.json`, `model.safetensors`,
a byte-level BPE `tokenizer.json` trained on the shipped corpus, a
`tokenizer_config.json` with a ChatML-style chat template, and a
`generation_config.json`. `transformers` loads it offline, which is how the
engine's outputs are checked token for token.

Everything is a function of (arch, seed, dtype, tie): the same arguments give
the same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tandem import env
from tandem.models.config import ARCHS, HF_NAMES
from tandem.models.tiny_tokenizer import (
    BOS,
    EOS,
    IM_END,
    PAD,
    SPECIAL_TOKENS,
    tokenizer_config,
    train_tokenizer,
)
from tandem.models.weights import save_weights

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_NAME = "tiny-llama"


@dataclass(frozen=True)
class TinyShape:
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2  # grouped-query attention, 2 query heads per KV head
    head_dim: int = 16
    max_position_embeddings: int = 2048


def _shape(arch: str, head_dim: int | None = None) -> TinyShape:
    # Qwen3 declares head_dim independently of hidden_size; a head_dim that is not
    # hidden_size // num_heads catches code that derives it.
    if head_dim is not None:
        return TinyShape(head_dim=head_dim)
    return TinyShape(head_dim=32) if arch == "qwen3" else TinyShape()


def hf_config(
    arch: str, vocab_size: int, dtype: str, tie: bool, head_dim: int | None = None
) -> dict[str, Any]:
    """The config.json of a tiny model, in the layout published checkpoints use."""
    shape = _shape(arch, head_dim)
    config: dict[str, Any] = {
        "architectures": [HF_NAMES[arch]],
        "model_type": arch,
        "vocab_size": vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": shape.max_position_embeddings,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-5 if arch == "llama" else 1e-6,
        "rope_theta": 500_000.0 if arch == "llama" else 1_000_000.0,
        "tie_word_embeddings": tie,
        "torch_dtype": dtype,
        "bos_token_id": SPECIAL_TOKENS.index(BOS),
        "eos_token_id": SPECIAL_TOKENS.index(EOS),
        "pad_token_id": SPECIAL_TOKENS.index(PAD),
        "use_cache": True,
        "attention_dropout": 0.0,
    }
    config.update(_ARCH_FIELDS[arch])
    return config


_ARCH_FIELDS: dict[str, dict[str, Any]] = {
    # original_max_position_embeddings 256 with head_dim 16 and theta 5e5 puts
    # RoPE frequencies in all three llama3 bands (kept, smoothed, divided by factor).
    "llama": {
        "attention_bias": False,
        "mlp_bias": False,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 256,
        },
    },
    "mistral": {"sliding_window": None},
    "qwen2": {"use_sliding_window": False, "sliding_window": None, "max_window_layers": 4},
    "qwen3": {
        "attention_bias": False,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": 4,
    },
}


def random_weights(
    arch: str, vocab_size: int, seed: int, tie: bool, head_dim: int | None = None
) -> dict[str, torch.Tensor]:
    """HF-named float32 tensors. Norm weights are drawn around 1 (not exactly 1)
    and biases are non-zero so that a loader that drops one of them is caught."""
    shape = _shape(arch, head_dim)
    gen = torch.Generator().manual_seed(seed)

    def normal(*size: int, std: float) -> torch.Tensor:
        return torch.randn(*size, generator=gen) * std

    def norm_weight(size: int) -> torch.Tensor:
        return 1.0 + (torch.rand(size, generator=gen) - 0.5) * 0.4

    h, i_size = shape.hidden_size, shape.intermediate_size
    q_out = shape.num_attention_heads * shape.head_dim
    kv_out = shape.num_key_value_heads * shape.head_dim
    out: dict[str, torch.Tensor] = {"model.embed_tokens.weight": normal(vocab_size, h, std=0.5)}
    for layer in range(shape.num_hidden_layers):
        p = f"model.layers.{layer}."
        out[p + "input_layernorm.weight"] = norm_weight(h)
        # Output projections are larger than the usual 0.02 so that attention and
        # the MLP move the residual stream: otherwise the last token's embedding
        # dominates and greedy decoding repeats one token.
        for name, rows, cols, std in (
            ("q_proj", q_out, h, 0.2),
            ("k_proj", kv_out, h, 0.2),
            ("v_proj", kv_out, h, 0.2),
            ("o_proj", h, q_out, 0.3),
        ):
            out[p + f"self_attn.{name}.weight"] = normal(rows, cols, std=std)
            if arch == "qwen2" and name != "o_proj":
                out[p + f"self_attn.{name}.bias"] = normal(rows, std=0.1)
        if arch == "qwen3":
            out[p + "self_attn.q_norm.weight"] = norm_weight(shape.head_dim)
            out[p + "self_attn.k_norm.weight"] = norm_weight(shape.head_dim)
        out[p + "post_attention_layernorm.weight"] = norm_weight(h)
        out[p + "mlp.gate_proj.weight"] = normal(i_size, h, std=0.2)
        out[p + "mlp.up_proj.weight"] = normal(i_size, h, std=0.2)
        out[p + "mlp.down_proj.weight"] = normal(h, i_size, std=0.3)
    out["model.norm.weight"] = norm_weight(h)
    if not tie:
        out["lm_head.weight"] = normal(vocab_size, h, std=0.5)
    return out


def write_tiny_model(
    dest: str | Path,
    arch: str = "llama",
    seed: int = 0,
    dtype: str = "float32",
    tie_embeddings: bool = False,
    head_dim: int | None = None,
) -> Path:
    """Write a tiny model folder at `dest` (which must not exist or be empty).
    `head_dim` overrides the architecture's default (tests of odd head sizes)."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    folder = Path(dest)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(f"{folder} exists and is not an empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(arch)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    _write_json(
        folder / "tokenizer_config.json",
        tokenizer_config(arch, _shape(arch).max_position_embeddings),
    )
    _write_json(
        folder / "config.json", hf_config(arch, vocab_size, dtype, tie_embeddings, head_dim)
    )
    _write_json(
        folder / "generation_config.json",
        {
            "bos_token_id": SPECIAL_TOKENS.index(BOS),
            "eos_token_id": [SPECIAL_TOKENS.index(EOS), SPECIAL_TOKENS.index(IM_END)],
            "pad_token_id": SPECIAL_TOKENS.index(PAD),
        },
    )
    weights = random_weights(arch, vocab_size, seed, tie_embeddings, head_dim)
    save_weights({k: v.to(DTYPES[dtype]) for k, v in weights.items()}, folder)
    return folder


def ensure_tiny_model(dest: Path | None = None) -> Path:
    """The default tiny model (llama, seed 0), created once under TANDEM_HOME.

    Built in a temporary sibling folder and renamed into place, so a concurrent
    caller or a crash never leaves a half-written model behind.
    """
    folder = dest if dest is not None else env.read().home / "models" / DEFAULT_NAME
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        write_tiny_model(staging, arch="llama", seed=0)
        os.rename(staging, folder)
    except OSError:
        # Another process won the race (rename onto a non-empty folder fails).
        if not (folder / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
