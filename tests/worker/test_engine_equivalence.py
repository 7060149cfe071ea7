"""Greedy output is token-identical to transformers' generate (float32, CPU)
for every supported architecture, for a batch of mixed-length prompts
submitted together, with chunked prefill, prefix caching and preemption."""

from __future__ import annotations

from pathlib import Path

import pytest

from tandem.sampling import SamplingParams
from tandem.worker import metrics
from tandem.worker.config import EngineConfig
from tandem.worker.engine import Engine
from tests.worker.conftest import ModelFactory, hf_greedy, mixed_prompts

NEW_TOKENS = 10
LENGTHS = (5, 17, 33, 8, 47, 3, 26, 12)  # longest (with prefix) 71 > chunk of 16
GREEDY = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)

_refs: dict[tuple[str, bool], tuple[list[list[int]], list[list[int]]]] = {}


def run_engine(model: Path, prompts: list[list[int]], **cfg: object) -> tuple[list[list[int]], Engine]:
    engine = Engine(EngineConfig(str(model), device="cpu", dtype="float32", **cfg))  # type: ignore[arg-type]
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, GREEDY)
    got: dict[str, list[int]] = {f"r{i}": [] for i in range(len(prompts))}
    done = 0
    while engine.has_work():
        for out in engine.step():
            got[out.request_id].extend(out.new_token_ids)
            done += out.finished
    assert done == len(prompts)
    return [got[f"r{i}"] for i in range(len(prompts))], engine


def reference(tiny_model: ModelFactory, arch: str, tie: bool) -> tuple[Path, list[list[int]], list[list[int]]]:
    model = tiny_model(arch, tie)
    if (arch, tie) not in _refs:
        prompts = mixed_prompts(seed=7, vocab=1000, lengths=LENGTHS, shared_prefix=24)
        _refs[(arch, tie)] = (prompts, hf_greedy(model, prompts, NEW_TOKENS))
    prompts, ref = _refs[(arch, tie)]
    return model, prompts, ref


CASES = [
    ("llama", False),
    ("llama", True),
    ("mistral", False),
    ("qwen2", False),
    ("qwen3", False),
]


@pytest.mark.parametrize(("arch", "tie"), CASES)
def test_chunked_prefill_with_prefix_cache_matches_transformers(
    tiny_model: ModelFactory, arch: str, tie: bool
) -> None:
    model, prompts, ref = reference(tiny_model, arch, tie)
    # Warm the prefix cache with the shared prefix first, so later prompts hit it.
    warm, engine = run_engine(model, prompts[:1], max_num_batched_tokens=16, num_kv_blocks=256)
    assert warm == ref[:1]
    for i, p in enumerate(prompts):
        engine.add_request(f"again{i}", p, GREEDY)
    got: dict[str, list[int]] = {}
    cached: dict[str, int] = {}
    while engine.has_work():
        for out in engine.step():
            got.setdefault(out.request_id, []).extend(out.new_token_ids)
            if out.finished:
                cached[out.request_id] = out.num_cached_tokens
    assert [got[f"again{i}"] for i in range(len(prompts))] == ref
    # Prompts with the shared prefix reuse at least its full blocks.
    assert all(cached[f"again{i}"] >= 16 for i in range(0, len(prompts), 2))
    assert engine.pool.num_used == 0


@pytest.mark.parametrize(("arch", "tie"), CASES)
def test_tiny_kv_pool_preempts_and_still_matches_transformers(
    tiny_model: ModelFactory, arch: str, tie: bool
) -> None:
    model, prompts, ref = reference(tiny_model, arch, tie)
    before = metrics.PREEMPTIONS._value.get()
    got, engine = run_engine(
        model, prompts, max_num_batched_tokens=32, num_kv_blocks=8, block_size=16
    )
    assert got == ref
    assert metrics.PREEMPTIONS._value.get() > before, "the pool was meant to be too small for the batch"
    assert engine.pool.num_used == 0


def test_prefix_caching_off_gives_the_same_tokens(tiny_model: ModelFactory) -> None:
    model, prompts, ref = reference(tiny_model, "llama", False)
    got, _ = run_engine(model, prompts, enable_prefix_caching=False, max_num_batched_tokens=24)
    assert got == ref
