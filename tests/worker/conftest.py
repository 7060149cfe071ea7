"""Factories for engine tests: tiny model folders (one per architecture per
session) and greedy references from transformers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tandem.models.tiny import write_tiny_model

ModelFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> ModelFactory:
    cache: dict[tuple[str, bool, int | None], Path] = {}

    def make(arch: str = "llama", tie: bool = False, head_dim: int | None = None) -> Path:
        key = (arch, tie, head_dim)
        if key not in cache:
            dest = tmp_path_factory.mktemp(f"tiny-{arch}{'-tied' if tie else ''}-{head_dim}")
            cache[key] = write_tiny_model(
                dest / "model", arch=arch, seed=0, tie_embeddings=tie, head_dim=head_dim
            )
        return cache[key]

    return make


def hf_greedy(model_dir: Path, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Reference tokens from transformers' generate (float32, CPU, greedy, no EOS stop)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    # No EOS at all (rather than min_new_tokens, which would also bias the
    # logits by suppressing every EOS id).
    model.generation_config.eos_token_id = None
    out = []
    for p in prompts:
        ids = model.generate(
            torch.tensor([p]),
            attention_mask=torch.ones(1, len(p), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
        out.append(ids[0, len(p) :].tolist())
    return out


def mixed_prompts(
    seed: int, vocab: int, lengths: tuple[int, ...], shared_prefix: int = 0
) -> list[list[int]]:
    """Random prompts; with shared_prefix > 0 every other prompt starts with the same tokens."""
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(3, vocab, (shared_prefix,), generator=g).tolist()
    out = []
    for i, n in enumerate(lengths):
        body = torch.randint(3, vocab, (n,), generator=g).tolist()
        out.append(prefix + body if shared_prefix and i % 2 == 0 else body)
    return out
