"""Reading and writing the `*.safetensors` weight files of a model folder.

A folder holds either one `model.safetensors` or several shards listed by
`model.safetensors.index.json` (`weight_map`: tensor name -> file name). Tensors
are streamed one at a time so that a large model never needs two copies in host
memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from tandem.models.config import ModelFormatError, read_json

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def weight_files(model_dir: str | Path) -> list[Path]:
    """The weight files of a folder, in a stable order."""
    folder = Path(model_dir)
    index_path = folder / INDEX_FILE
    if index_path.exists():
        return [folder / name for name in sorted(set(_weight_map(index_path).values()))]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelFormatError(f"no *.safetensors weights file in model folder {folder}")
    return files


def _weight_map(index_path: Path) -> dict[str, str]:
    """tensor name -> file name, every listed file present."""
    index = read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelFormatError(f"{index_path}: field 'weight_map' must be a non-empty object")
    for tensor, name in weight_map.items():
        if not isinstance(name, str) or "/" in name or "\\" in name:
            raise ModelFormatError(
                f"{index_path}: field 'weight_map.{tensor}' must be a file name, got {name!r}"
            )
    for name in set(weight_map.values()):
        if not (index_path.parent / name).is_file():
            raise ModelFormatError(f"{index_path}: lists {name}, which does not exist")
    return weight_map


def iter_weights(
    model_dir: str | Path, dtype: torch.dtype, device: torch.device | str = "cpu"
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) for every tensor of the folder, floating-point ones
    cast to `dtype`, all placed on `device`."""
    folder = Path(model_dir)
    index_path = folder / INDEX_FILE
    weight_map = _weight_map(index_path) if index_path.exists() else None
    seen: dict[str, Path] = {}
    for path in weight_files(folder):
        handle, names = _open(path)
        for name in names:
            if name in seen:
                raise ModelFormatError(f"{path}: tensor {name!r} is also in {seen[name]}")
            seen[name] = path
        if weight_map is not None:
            _check_listed(index_path, weight_map, path.name, names)
        for name in names:
            tensor = _get(handle, path, name)
            if tensor.is_floating_point():
                tensor = tensor.to(dtype)
            yield name, tensor.to(device)


def _check_listed(
    index_path: Path, weight_map: dict[str, str], file_name: str, names: list[str]
) -> None:
    listed = {t for t, f in weight_map.items() if f == file_name}
    missing = sorted(listed - set(names))
    if missing:
        raise ModelFormatError(f"{index_path}: tensor {missing[0]!r} is not in {file_name}")


def _open(path: Path) -> tuple[Any, list[str]]:
    # Read failures name the file; a device error while placing a tensor later
    # is not the file's fault and passes through unchanged.
    try:
        # Opening on CPU and handing out one tensor at a time keeps peak host
        # memory at one tensor, not one file.
        handle = safe_open(str(path), framework="pt", device="cpu")
        return handle, list(handle.keys())
    except (SafetensorError, OSError) as exc:
        raise ModelFormatError(f"{path}: cannot read safetensors file: {exc}") from exc


def _get(handle: Any, path: Path, name: str) -> torch.Tensor:
    try:
        return handle.get_tensor(name)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise ModelFormatError(f"{path}: cannot read tensor {name!r}: {exc}") from exc


def save_weights(
    tensors: Mapping[str, torch.Tensor],
    model_dir: str | Path,
    max_shard_bytes: int | None = None,
) -> list[Path]:
    """Write tensors as `model.safetensors`, or as numbered shards plus the index
    file when they exceed `max_shard_bytes`. Returns the files written."""
    folder = Path(model_dir)
    shards = _plan_shards(tensors, max_shard_bytes)
    if len(shards) == 1:
        path = folder / SINGLE_FILE
        save_file(_contiguous(tensors, shards[0]), str(path), metadata={"format": "pt"})
        return [_publish(path)]
    written: list[Path] = []
    weight_map: dict[str, str] = {}
    for i, names in enumerate(shards, start=1):
        path = folder / f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(_contiguous(tensors, names), str(path), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, path.name))
        written.append(_publish(path))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return written


def _plan_shards(tensors: Mapping[str, torch.Tensor], max_bytes: int | None) -> list[list[str]]:
    """Split names (in the mapping's order) into consecutive groups under max_bytes."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if max_bytes is not None and shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _publish(path: Path) -> Path:
    # safetensors writes through a private temporary file (mode 0600); model
    # files are meant to be shared like the JSON files beside them.
    path.chmod(0o644)
    return path


def _contiguous(tensors: Mapping[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    return {name: tensors[name].detach().contiguous().cpu() for name in names}
