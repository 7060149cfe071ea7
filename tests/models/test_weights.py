from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tandem.models.config import ModelFormatError
from tandem.models.weights import INDEX_FILE, iter_weights, save_weights, weight_files


def sample_tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        "model.embed_tokens.weight": torch.randn(32, 8, generator=gen),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(8, 8, generator=gen),
        "model.layers.0.self_attn.q_proj.bias": torch.randn(8, generator=gen),
        "model.norm.weight": torch.randn(8, generator=gen),
        "step": torch.tensor([7, 8], dtype=torch.int64),
    }


def test_single_file_round_trip_casts_floats_only(tmp_path: Path) -> None:
    tensors = sample_tensors()
    written = save_weights(tensors, tmp_path)
    assert [p.name for p in written] == ["model.safetensors"]
    assert written[0].stat().st_mode & 0o777 == 0o644
    loaded = dict(iter_weights(tmp_path, torch.bfloat16))
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        got = loaded[name]
        if tensor.is_floating_point():
            assert got.dtype == torch.bfloat16
            assert torch.equal(got, tensor.to(torch.bfloat16))
        else:
            assert got.dtype == torch.int64
            assert torch.equal(got, tensor)


def test_sharded_round_trip_uses_the_index(tmp_path: Path) -> None:
    tensors = sample_tensors()
    # The embedding alone (1 KiB) fills a shard, so the set splits in several files.
    written = save_weights(tensors, tmp_path, max_shard_bytes=1024)
    assert len(written) >= 2
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert set(index["weight_map"]) == set(tensors)
    assert sorted({*index["weight_map"].values()}) == [p.name for p in written]
    # A stray file that the index does not list is not read.
    other = tmp_path / "other"
    other.mkdir()
    save_weights({"stray": torch.zeros(1)}, other)
    (tmp_path / "extra.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    assert weight_files(tmp_path) == written
    loaded = dict(iter_weights(tmp_path, torch.float32))
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_no_weights_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(
        ModelFormatError,
        match=re.escape(f"no *.safetensors weights file in model folder {tmp_path}"),
    ):
        list(iter_weights(tmp_path, torch.float32))


def test_corrupt_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(ModelFormatError, match=re.escape(f"{path}: cannot read safetensors file")):
        list(iter_weights(tmp_path, torch.float32))


def test_truncated_file_names_the_file(tmp_path: Path) -> None:
    save_weights(sample_tensors(), tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelFormatError, match=re.escape(str(path))):
        list(iter_weights(tmp_path, torch.float32))


def test_index_listing_a_missing_shard(tmp_path: Path) -> None:
    save_weights(sample_tensors(), tmp_path, max_shard_bytes=1024)
    (tmp_path / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(
        ModelFormatError, match=r"lists model-00001-of-00002\.safetensors, which does not exist"
    ):
        weight_files(tmp_path)


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ({"weight_map": {}}, "field 'weight_map' must be a non-empty object"),
        ({"metadata": {}}, "field 'weight_map' must be a non-empty object"),
        (
            {"weight_map": {"a": "../outside.safetensors"}},
            "field 'weight_map.a' must be a file name",
        ),
    ],
)
def test_bad_index(tmp_path: Path, index: dict[str, object], message: str) -> None:
    (tmp_path / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(ModelFormatError, match=re.escape(f"{tmp_path / INDEX_FILE}: {message}")):
        weight_files(tmp_path)


def test_index_tensor_missing_from_its_file(tmp_path: Path) -> None:
    save_weights(sample_tensors(), tmp_path, max_shard_bytes=1024)
    index_path = tmp_path / INDEX_FILE
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.ghost.weight"] = "model-00002-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(
        ModelFormatError,
        match=re.escape(
            f"{index_path}: tensor 'model.ghost.weight' is not in model-00002-of-00002.safetensors"
        ),
    ):
        list(iter_weights(tmp_path, torch.float32))


def test_tensor_in_two_files(tmp_path: Path) -> None:
    save_weights(sample_tensors(), tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "a.safetensors")
    save_weights({"model.norm.weight": torch.ones(8)}, tmp_path)
    with pytest.raises(
        ModelFormatError,
        match=re.escape(
            f"{tmp_path / 'model.safetensors'}: tensor 'model.norm.weight' is also in {tmp_path / 'a.safetensors'}"
        ),
    ):
        list(iter_weights(tmp_path, torch.float32))
