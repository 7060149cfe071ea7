"""Factories for test inputs that are costly enough to share across a session.

    from tests.factories import make_tiny_model
    folder = make_tiny_model(tmp_path_factory, "qwen3")

Each distinct (arch, seed, dtype, tie_embeddings) folder is written once per
session and reused; tests must treat it as read-only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_made: dict[tuple[str, str, int, str, bool], Path] = {}


def make_tiny_model(
    tmp_path_factory: pytest.TempPathFactory,
    arch: str = "llama",
    *,
    seed: int = 0,
    dtype: str = "float32",
    tie_embeddings: bool = False,
) -> Path:
    """A tiny random-weight Hugging Face-format model folder (see tandem.models.tiny)."""
    from tandem.models.tiny import write_tiny_model

    key = (str(tmp_path_factory.getbasetemp()), arch, seed, dtype, tie_embeddings)
    if key not in _made:
        name = f"tiny-{arch}-s{seed}-{dtype}{'-tied' if tie_embeddings else ''}"
        folder = tmp_path_factory.mktemp(name, numbered=True)
        _made[key] = write_tiny_model(
            folder, arch=arch, seed=seed, dtype=dtype, tie_embeddings=tie_embeddings
        )
    return _made[key]
