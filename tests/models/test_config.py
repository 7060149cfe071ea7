from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tandem.models.config import ModelFormatError, RopeScaling, load_config, parse_config


def llama(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 128256,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
    }
    raw.update(overrides)
    return {k: v for k, v in raw.items() if v is not _DROP}


_DROP = object()


def test_llama3_config() -> None:
    cfg = parse_config(llama(), {"eos_token_id": [128001, 128009, 7]}, "config.json")
    assert cfg.arch == "llama"
    assert cfg.hf_architecture == "LlamaForCausalLM"
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (32, 8, 128)
    assert cfg.rope_theta == 500000.0
    assert cfg.rope_scaling == RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)
    assert cfg.torch_dtype == "bfloat16"
    assert cfg.bos_token_id == 128000
    # config.json's ids first, generation_config.json's new ones after, no duplicates.
    assert cfg.eos_token_ids == (128001, 128008, 128009, 7)
    assert not cfg.attention_bias and not cfg.o_proj_bias and not cfg.qk_norm
    assert cfg.kv_bytes_per_token(2) == 2 * 32 * 8 * 128 * 2


@pytest.mark.parametrize(
    ("raw", "expect"),
    [
        (
            {
                "architectures": ["MistralForCausalLM"],
                "sliding_window": 4096,
                "rope_scaling": None,
                "rope_theta": 1e6,
            },
            {"arch": "mistral", "sliding_window": 4096, "rope_scaling": None, "rope_theta": 1e6},
        ),
        (
            {
                "architectures": ["Qwen2ForCausalLM"],
                "rope_scaling": None,
                "use_sliding_window": False,
            },
            {"arch": "qwen2", "attention_bias": True, "o_proj_bias": False, "qk_norm": False},
        ),
        (
            {"architectures": ["Qwen3ForCausalLM"], "rope_scaling": None, "head_dim": 256},
            {"arch": "qwen3", "head_dim": 256, "qk_norm": True, "attention_bias": False},
        ),
        (
            {"architectures": ["Qwen3ForCausalLM"], "rope_scaling": None, "attention_bias": True},
            {"attention_bias": True, "o_proj_bias": True},
        ),
        (
            {"attention_bias": True},
            {"arch": "llama", "attention_bias": True, "o_proj_bias": True},
        ),
        # No `architectures`: model_type decides.
        ({"architectures": _DROP, "model_type": "qwen2"}, {"hf_architecture": "Qwen2ForCausalLM"}),
        # Newer layout: rope_parameters carries theta and scaling; `dtype` replaces torch_dtype.
        (
            {
                "rope_scaling": _DROP,
                "rope_theta": _DROP,
                "torch_dtype": _DROP,
                "dtype": "float16",
                "rope_parameters": {"rope_type": "default", "rope_theta": 1234.0},
            },
            {"rope_theta": 1234.0, "rope_scaling": None, "torch_dtype": "float16"},
        ),
        (
            {"rope_scaling": {"type": "linear", "factor": 2.0}},
            {"rope_scaling": RopeScaling("linear", factor=2.0)},
        ),
        # llama3 scaling without original_max_position_embeddings: the model's maximum.
        (
            {
                "rope_scaling": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                }
            },
            {"rope_scaling": RopeScaling("llama3", 8.0, 1.0, 4.0, 131072)},
        ),
        (
            {"rope_scaling": _DROP, "rope_theta": _DROP, "num_key_value_heads": _DROP},
            {"rope_theta": 10000.0, "num_key_value_heads": 32, "rope_scaling": None},
        ),
        ({"eos_token_id": 2, "bos_token_id": None}, {"eos_token_ids": (2,), "bos_token_id": None}),
        ({"torch_dtype": _DROP}, {"torch_dtype": "float32"}),
        ({"tie_word_embeddings": True}, {"tie_word_embeddings": True}),
    ],
)
def test_valid_configs(raw: dict[str, Any], expect: dict[str, Any]) -> None:
    cfg = parse_config(llama(**raw), None, "config.json")
    for field, value in expect.items():
        assert getattr(cfg, field) == value, field


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"num_attention_heads": -1},
            "config.json: field 'num_attention_heads' must be a positive integer, got -1",
        ),
        (
            {"architectures": ["GPT2LMHeadModel"]},
            "config.json: architecture 'GPT2LMHeadModel' is not supported (supported: "
            "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)",
        ),
        ({"architectures": "LlamaForCausalLM"}, "field 'architectures' must be a list"),
        ({"architectures": _DROP, "model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
        ({"hidden_size": _DROP}, "field 'hidden_size' is required"),
        ({"vocab_size": "128256"}, "field 'vocab_size' must be a positive integer, got '128256'"),
        ({"num_hidden_layers": True}, "field 'num_hidden_layers' must be a positive integer"),
        ({"num_key_value_heads": 5}, "field 'num_key_value_heads' (5) must divide"),
        ({"hidden_size": 4000, "num_attention_heads": 48}, "field 'head_dim' is required"),
        ({"rms_norm_eps": 0}, "field 'rms_norm_eps' must be a positive number"),
        ({"hidden_act": "gelu"}, "field 'hidden_act' must be 'silu'"),
        ({"mlp_bias": True}, "field 'mlp_bias' true is not supported"),
        ({"tie_word_embeddings": "yes"}, "field 'tie_word_embeddings' must be true or false"),
        ({"torch_dtype": "float64"}, "field 'torch_dtype' must be one of"),
        (
            {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
            "field 'rope_scaling.rope_type' value 'yarn' is not supported "
            "(supported: default, linear, llama3)",
        ),
        (
            {"rope_scaling": {"type": "dynamic", "factor": 2.0}},
            "field 'rope_scaling.type' value 'dynamic'",
        ),
        ({"rope_scaling": {"rope_type": "linear"}}, "field 'rope_scaling.factor' is required"),
        (
            {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0}},
            "field 'rope_scaling.low_freq_factor' is required",
        ),
        (
            {
                "rope_scaling": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 4.0,
                    "high_freq_factor": 1.0,
                }
            },
            "field 'rope_scaling.high_freq_factor' (1.0) must be greater than low_freq_factor (4.0)",
        ),
        ({"rope_scaling": "llama3"}, "field 'rope_scaling' must be an object or null"),
        (
            {"rope_parameters": {"rope_type": "longrope"}},
            "field 'rope_parameters.rope_type' value 'longrope'",
        ),
        (
            {"rope_theta": -1.0, "rope_scaling": None},
            "field 'rope_theta' must be a positive number",
        ),
        ({"eos_token_id": "</s>"}, "field 'eos_token_id' must be a token id or a list"),
        ({"bos_token_id": -1}, "field 'bos_token_id' must be a non-negative integer or null"),
        ({"max_position_embeddings": _DROP}, "field 'max_position_embeddings' is required"),
        (
            {"architectures": ["Qwen2ForCausalLM"], "use_sliding_window": True},
            "field 'use_sliding_window' true is not supported",
        ),
    ],
)
def test_invalid_configs(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelFormatError) as info:
        parse_config(llama(**raw), None, "config.json")
    assert message in str(info.value)
    assert str(info.value).startswith("config.json: ")


def test_generation_config_errors_name_that_file() -> None:
    with pytest.raises(
        ModelFormatError, match=r"^/m/generation_config\.json: field 'eos_token_id'"
    ):
        parse_config(llama(), {"eos_token_id": [1.5]}, "/m/config.json")


def test_config_must_be_an_object() -> None:
    with pytest.raises(ModelFormatError, match=r"^config\.json: expected a JSON object"):
        parse_config([1, 2], None, "config.json")  # type: ignore[arg-type]


def test_load_config_reads_both_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(llama(eos_token_id=5)))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 9]}))
    cfg = load_config(tmp_path)
    assert cfg.eos_token_ids == (5, 9)


def test_load_config_missing_file_names_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError) as info:
        load_config(tmp_path)
    assert str(info.value) == f"config.json not found in model folder {tmp_path}"


def test_load_config_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="does not exist"):
        load_config(tmp_path / "nope")


def test_load_config_invalid_json_names_path(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(
        ModelFormatError, match="^" + re.escape(f"{tmp_path / 'config.json'}: invalid JSON")
    ):
        load_config(tmp_path)


def test_load_config_errors_carry_the_path(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(llama(num_attention_heads=0)))
    with pytest.raises(
        ModelFormatError,
        match="^" + re.escape(f"{tmp_path / 'config.json'}: field 'num_attention_heads'"),
    ):
        load_config(tmp_path)
