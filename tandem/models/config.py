"""The model description read from a Hugging Face-format folder's `config.json`
(and `generation_config.json`), validated into one frozen `ModelConfig`.

Parsing is a pure function (`parse_config`) over the decoded JSON so that every
accepted and rejected shape is table-tested; `load_config` is the thin I/O shell.
Both the older layout (`rope_theta` + `rope_scaling`, `torch_dtype`) that most
published checkpoints use and the newer one (`rope_parameters`, `dtype`) are read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"

# Hugging Face class name -> our architecture name.
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
ARCHS = tuple(ARCHITECTURES.values())
# model_type (= our architecture name) -> class name, for configs without `architectures`.
HF_NAMES = {arch: name for name, arch in ARCHITECTURES.items()}
DTYPES = ("float32", "bfloat16", "float16")
ROPE_TYPES = ("default", "linear", "llama3")


class ModelFormatError(ValueError):
    """A model folder that Tandem cannot load; the message names the file and field."""


@dataclass(frozen=True)
class RopeScaling:
    """Rotary-embedding frequency scaling (absent from `ModelConfig` when the
    checkpoint uses plain RoPE, so "default" never appears here in practice)."""

    rope_type: str  # "linear" | "llama3"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    arch: str  # "llama" | "mistral" | "qwen2" | "qwen3"
    hf_architecture: str  # e.g. "LlamaForCausalLM"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool  # bias on q/k/v projections
    qk_norm: bool  # RMSNorm over each head of q and k before RoPE (qwen3)
    torch_dtype: str  # "float32" | "bfloat16" | "float16" as declared
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    # Bias on o_proj as well: Llama's and Qwen3's `attention_bias` covers all four
    # projections, Qwen2's fixed bias covers q/k/v only.
    o_proj_bias: bool = False
    # Mistral-style sliding-window attention span in tokens; None: full attention.
    sliding_window: int | None = None

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """KV-cache bytes one token occupies across all layers (K and V)."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * dtype_bytes


class _Fields:
    """Typed readers over one JSON object; every error names the file and field."""

    def __init__(self, raw: dict[str, Any], source: str, prefix: str = "") -> None:
        self.raw = raw
        self.source = source
        self.prefix = prefix

    def error(self, key: str, problem: str) -> ModelFormatError:
        return ModelFormatError(f"{self.source}: field '{self.prefix}{key}' {problem}")

    def positive_int(self, key: str, default: int | None = None) -> int:
        value = self.raw.get(key, default)
        if value is None and default is None and key not in self.raw:
            raise self.error(key, "is required")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self.error(key, f"must be a positive integer, got {value!r}")
        return value

    def positive_float(self, key: str, default: float | None = None) -> float:
        value = self.raw.get(key, default)
        if value is None and default is None:
            raise self.error(key, "is required")
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise self.error(key, f"must be a positive number, got {value!r}")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

    def optional_token_id(self, key: str) -> int | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.error(key, f"must be a non-negative integer or null, got {value!r}")
        return value

    def token_ids(self, key: str) -> tuple[int, ...]:
        value = self.raw.get(key)
        if value is None:
            return ()
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, bool) or not isinstance(item, int) or item < 0:
                raise self.error(key, f"must be a token id or a list of token ids, got {value!r}")
        return tuple(items)


def parse_config(
    raw: dict[str, Any], generation: dict[str, Any] | None, source: str
) -> ModelConfig:
    """Validate a decoded `config.json` (+ optional `generation_config.json`).

    `source` names config.json in messages (a path or just the file name).
    """
    if not isinstance(raw, dict):
        raise ModelFormatError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    fields = _Fields(raw, source)
    hf_architecture, arch = _architecture(fields)
    if raw.get("hidden_act", "silu") != "silu":
        raise fields.error("hidden_act", f"must be 'silu', got {raw['hidden_act']!r}")
    if fields.boolean("mlp_bias", False):
        raise fields.error("mlp_bias", "true is not supported")
    hidden = fields.positive_int("hidden_size")
    heads = fields.positive_int("num_attention_heads")
    kv_heads = fields.positive_int("num_key_value_heads", heads)
    if heads % kv_heads:
        raise fields.error(
            "num_key_value_heads", f"({kv_heads}) must divide num_attention_heads ({heads})"
        )
    rope_theta, rope_scaling = _rope(fields)
    attention_bias = arch == "qwen2" or (
        arch != "mistral" and fields.boolean("attention_bias", False)
    )
    return ModelConfig(
        arch=arch,
        hf_architecture=hf_architecture,
        vocab_size=fields.positive_int("vocab_size"),
        hidden_size=hidden,
        intermediate_size=fields.positive_int("intermediate_size"),
        num_hidden_layers=fields.positive_int("num_hidden_layers"),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=_head_dim(fields, hidden, heads),
        rms_norm_eps=fields.positive_float("rms_norm_eps", 1e-6),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        max_position_embeddings=fields.positive_int("max_position_embeddings"),
        tie_word_embeddings=fields.boolean("tie_word_embeddings", False),
        attention_bias=attention_bias,
        qk_norm=arch == "qwen3",
        torch_dtype=_dtype(fields),
        bos_token_id=fields.optional_token_id("bos_token_id"),
        eos_token_ids=_eos_token_ids(fields, generation),
        o_proj_bias=attention_bias and arch != "qwen2",
        sliding_window=_sliding_window(fields, arch),
    )


def _architecture(fields: _Fields) -> tuple[str, str]:
    names = fields.raw.get("architectures")
    if names is None:
        model_type = fields.raw.get("model_type")
        if model_type not in HF_NAMES:
            raise fields.error(
                "architectures", f"is missing and model_type {model_type!r} is not supported"
            )
        return HF_NAMES[model_type], model_type
    if not isinstance(names, list) or len(names) != 1 or not isinstance(names[0], str):
        raise fields.error("architectures", f"must be a list of one class name, got {names!r}")
    name = names[0]
    if name not in ARCHITECTURES:
        supported = ", ".join(ARCHITECTURES)
        raise ModelFormatError(
            f"{fields.source}: architecture {name!r} is not supported (supported: {supported})"
        )
    return name, ARCHITECTURES[name]


def _head_dim(fields: _Fields, hidden: int, heads: int) -> int:
    if fields.raw.get("head_dim") is not None:
        return fields.positive_int("head_dim")
    if hidden % heads:
        raise fields.error(
            "head_dim",
            f"is required when hidden_size ({hidden}) is not a multiple of num_attention_heads ({heads})",
        )
    return hidden // heads


def _rope(fields: _Fields) -> tuple[float, RopeScaling | None]:
    # Newer configs keep everything in `rope_parameters`; older ones split the
    # base (`rope_theta`) from the scaling (`rope_scaling`). Values inside the
    # dict win, as in transformers.
    key = "rope_parameters" if fields.raw.get("rope_parameters") is not None else "rope_scaling"
    params = fields.raw.get(key)
    if params is None:
        return fields.positive_float("rope_theta", 10_000.0), None
    if not isinstance(params, dict):
        raise fields.error(key, f"must be an object or null, got {params!r}")
    sub = _Fields(params, fields.source, prefix=f"{key}.")
    theta = (
        sub.positive_float("rope_theta")
        if "rope_theta" in params
        else fields.positive_float("rope_theta", 10_000.0)
    )
    type_key = "rope_type" if "rope_type" in params else "type"
    rope_type = params.get(type_key, "default")
    if rope_type not in ROPE_TYPES:
        raise sub.error(
            type_key, f"value {rope_type!r} is not supported (supported: {', '.join(ROPE_TYPES)})"
        )
    if rope_type == "default":
        return theta, None
    if rope_type == "linear":
        return theta, RopeScaling("linear", factor=sub.positive_float("factor"))
    original = sub.positive_int(
        "original_max_position_embeddings",
        fields.raw.get("max_position_embeddings") or None,
    )
    low = sub.positive_float("low_freq_factor")
    high = sub.positive_float("high_freq_factor")
    if not high > low:
        raise sub.error(
            "high_freq_factor", f"({high}) must be greater than low_freq_factor ({low})"
        )
    return theta, RopeScaling(
        "llama3",
        factor=sub.positive_float("factor"),
        low_freq_factor=low,
        high_freq_factor=high,
        original_max_position_embeddings=original,
    )


def _dtype(fields: _Fields) -> str:
    key = "dtype" if fields.raw.get("dtype") is not None else "torch_dtype"
    value = fields.raw.get(key, "float32")
    if value is None:
        return "float32"
    if value not in DTYPES:
        raise fields.error(key, f"must be one of {', '.join(DTYPES)}, got {value!r}")
    return str(value)


def _sliding_window(fields: _Fields, arch: str) -> int | None:
    if arch in ("qwen2", "qwen3"):
        if fields.boolean("use_sliding_window", False):
            raise fields.error("use_sliding_window", "true is not supported")
        return None
    if arch == "mistral" and fields.raw.get("sliding_window") is not None:
        return fields.positive_int("sliding_window")
    return None


def _eos_token_ids(fields: _Fields, generation: dict[str, Any] | None) -> tuple[int, ...]:
    ids = list(fields.token_ids("eos_token_id"))
    if generation is not None:
        gen_source = str(Path(fields.source).with_name(GENERATION_CONFIG_FILE))
        if not isinstance(generation, dict):
            raise ModelFormatError(f"{gen_source}: expected a JSON object")
        ids += _Fields(generation, gen_source).token_ids("eos_token_id")
    # Order kept (the first is the model's own end token), duplicates dropped.
    return tuple(dict.fromkeys(ids))


def read_json(path: Path) -> Any:
    """Decode one JSON file, naming it in every failure."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelFormatError(f"{path.name} not found in model folder {path.parent}") from None
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot read: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{path}: invalid JSON: {exc}") from exc


def load_config(model_dir: str | Path) -> ModelConfig:
    folder = Path(model_dir)
    if not folder.is_dir():
        raise ModelFormatError(f"model folder {folder} does not exist or is not a folder")
    raw = read_json(folder / CONFIG_FILE)
    generation_path = folder / GENERATION_CONFIG_FILE
    generation = read_json(generation_path) if generation_path.exists() else None
    return parse_config(raw, generation, str(folder / CONFIG_FILE))
