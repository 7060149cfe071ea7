from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from tandem import cli
from tandem.models.config import load_config
from tandem.models.tiny import ensure_tiny_model, write_tiny_model
from tandem.models.weights import iter_weights
from tests.factories import make_tiny_model

# No test may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_folder_loads_in_transformers_with_matching_config(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM

    cfg = load_config(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    hf = model.config
    assert type(model).__name__ == cfg.hf_architecture
    for field in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
        "rms_norm_eps",
        "tie_word_embeddings",
        "bos_token_id",
    ):
        assert getattr(hf, field) == getattr(cfg, field), field
    assert hf.rope_parameters["rope_theta"] == cfg.rope_theta
    if cfg.rope_scaling is not None:
        assert hf.rope_parameters["rope_type"] == cfg.rope_scaling.rope_type
        assert hf.rope_parameters["factor"] == cfg.rope_scaling.factor
    # Every tensor in the file lands in the transformers model unchanged: the
    # names and shapes are the published layout.
    state = model.state_dict()
    for name, tensor in iter_weights(tiny_model, torch.float32):
        assert torch.equal(state[name], tensor), name


def test_architecture_features(tiny_model: Path) -> None:
    cfg = load_config(tiny_model)
    names = {name for name, _ in iter_weights(tiny_model, torch.float32)}
    assert ("model.layers.0.self_attn.q_proj.bias" in names) == cfg.attention_bias
    assert ("model.layers.0.self_attn.q_norm.weight" in names) == cfg.qk_norm
    assert ("lm_head.weight" in names) == (not cfg.tie_word_embeddings)
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # grouped-query attention
    expected = {
        "llama": (False, False),
        "mistral": (False, False),
        "qwen2": (True, False),
        "qwen3": (False, True),
    }
    assert (cfg.attention_bias, cfg.qk_norm) == expected[cfg.arch]
    if cfg.arch == "llama":
        assert cfg.rope_scaling is not None and cfg.rope_scaling.rope_type == "llama3"
    if cfg.arch == "qwen3":
        assert cfg.head_dim != cfg.hidden_size // cfg.num_attention_heads


def test_greedy_output_is_not_degenerate(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    prompt = torch.tensor([[5, 300, 301, 302, 303]])
    out = model.generate(prompt, max_new_tokens=32, do_sample=False)[0, 5:].tolist()
    assert len(out) == 32
    assert len(set(out)) >= 12, out
    # Logits spread enough that the top choice is clear of the runner-up.
    logits = model(prompt).logits[0, -1]
    top2 = logits.topk(2).values
    assert logits.std() > 1.0
    assert top2[0] - top2[1] > 1e-3


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = write_tiny_model(tmp_path / "a", arch="qwen2", seed=3, dtype="bfloat16")
    b = write_tiny_model(tmp_path / "b", arch="qwen2", seed=3, dtype="bfloat16")
    c = write_tiny_model(tmp_path / "c", arch="qwen2", seed=4, dtype="bfloat16")
    assert digests(a) == digests(b)
    assert digests(a)["model.safetensors"] != digests(c)["model.safetensors"]
    assert digests(a)["tokenizer.json"] == digests(c)["tokenizer.json"]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_dtype_and_tied_embeddings(tmp_path_factory: pytest.TempPathFactory, dtype: str) -> None:
    folder = make_tiny_model(tmp_path_factory, "mistral", dtype=dtype, tie_embeddings=True)
    cfg = load_config(folder)
    assert cfg.torch_dtype == dtype and cfg.tie_word_embeddings
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        names = list(handle.keys())
        assert "lm_head.weight" not in names
        assert handle.get_tensor("model.norm.weight").dtype == getattr(torch, dtype)


def test_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        write_tiny_model(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"arch": "gpt2"}, "arch must be one of"), ({"dtype": "int8"}, "dtype must be one of")],
)
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_tiny_model(tmp_path / "m", **kwargs)  # type: ignore[arg-type]


def test_cli_make_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "m"
    rc = cli.main(
        [
            "model",
            "make-tiny",
            str(dest),
            "--arch",
            "qwen3",
            "--seed",
            "7",
            "--dtype",
            "bfloat16",
            "--tie-embeddings",
        ]
    )
    assert rc == 0
    assert capsys.readouterr().out.strip() == str(dest)
    raw = json.loads((dest / "config.json").read_text())
    assert raw["architectures"] == ["Qwen3ForCausalLM"]
    assert raw["torch_dtype"] == "bfloat16" and raw["tie_word_embeddings"] is True
    assert digests(dest) == digests(
        write_tiny_model(
            tmp_path / "again", arch="qwen3", seed=7, dtype="bfloat16", tie_embeddings=True
        )
    )
    assert cli.main(["model", "make-tiny", str(dest)]) == 1
    assert "not an empty folder" in capsys.readouterr().err


def test_ensure_tiny_model_creates_once_under_tandem_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path / "home"))
    folder = ensure_tiny_model()
    assert folder == tmp_path / "home" / "models" / "tiny-llama"
    assert load_config(folder).arch == "llama"
    before = digests(folder)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model() == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert digests(folder) == before
    # No staging folders are left behind.
    assert [p.name for p in folder.parent.iterdir()] == ["tiny-llama"]


def test_ensure_tiny_model_concurrent_callers_agree(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    dest = tmp_path / "cache" / "tiny"
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: ensure_tiny_model(dest), range(3)))
    assert results == [dest] * 3
    assert load_config(dest).arch == "llama"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["tiny"]
