"""Prefill-role engine + KV export -> decode-role engine + KV import gives
exactly the tokens of a `both` engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from tandem.sampling import SamplingParams
from tandem.worker.config import EngineConfig
from tandem.worker.engine import Engine
from tandem.worker.errors import UnknownRequest, WrongRole
from tandem.worker.outputs import KVChunk
from tests.worker.conftest import ModelFactory, mixed_prompts

P = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)


def engine(model: Path, role: str, **kw: object) -> Engine:
    return Engine(EngineConfig(str(model), device="cpu", role=role, num_kv_blocks=64, **kw))  # type: ignore[arg-type]


def run_all(e: Engine) -> dict[str, list[int]]:
    got: dict[str, list[int]] = {}
    while e.has_work():
        for out in e.step():
            got.setdefault(out.request_id, []).extend(out.new_token_ids)
    return got


def disaggregated(prefill: Engine, decode: Engine, rid: str, prompt: list[int]) -> tuple[list[int], list[KVChunk]]:
    res = decode.reserve(rid, prompt, P)
    chunks: list[KVChunk] = []
    prefill.add_request(rid, prompt, P, kv_sink=chunks.append, skip_blocks=res.skip_blocks)
    first = run_all(prefill)[rid]
    assert len(first) == 1
    for c in chunks:
        decode.import_kv(c)
    assert decode.start_decode(rid, first[0]) is None
    return first + run_all(decode)[rid], chunks


@pytest.mark.parametrize("chunk", [2048, 16])
def test_prefill_export_decode_import_matches_both(tiny_model: ModelFactory, chunk: int) -> None:
    model = tiny_model("qwen2")
    prompts = mixed_prompts(seed=3, vocab=1000, lengths=(37, 16, 5))
    both = engine(model, "both")
    for i, p in enumerate(prompts):
        both.add_request(f"r{i}", p, P)
    expected = run_all(both)
    pre = engine(model, "prefill", max_num_batched_tokens=chunk)
    dec = engine(model, "decode")
    for i, p in enumerate(prompts):
        tokens, chunks = disaggregated(pre, dec, f"r{i}", p)
        assert tokens == expected[f"r{i}"]
        layers = {c.layer for c in chunks}
        assert layers == set(range(4))
        # Every block of the prompt arrives exactly once per layer.
        nblocks = -(-len(p) // 16)
        for layer in layers:
            got = sorted(
                b for c in chunks if c.layer == layer for b in range(c.first_block, c.first_block + c.num_blocks)
            )
            assert got == list(range(nblocks))
    assert pre.pool.num_used == 0 and dec.pool.num_used == 0


def test_chunked_prefill_ships_blocks_as_they_complete(tiny_model: ModelFactory) -> None:
    model = tiny_model("llama")
    pre = engine(model, "prefill", max_num_batched_tokens=16)
    chunks: list[KVChunk] = []
    prompt = mixed_prompts(seed=5, vocab=1000, lengths=(40,))[0]
    pre.add_request("x", prompt, P, kv_sink=chunks.append)
    pre.step()  # tokens 0..15: block 0 complete
    assert sorted({(c.first_block, c.num_blocks) for c in chunks}) == [(0, 1)]
    pre.step()  # tokens 16..31: block 1
    pre.step()  # tokens 32..39: last, partial block 2 at the end
    assert sorted({(c.first_block, c.num_blocks) for c in chunks}) == [(0, 1), (1, 1), (2, 1)]


def test_decode_side_prefix_cache_skips_shipping(tiny_model: ModelFactory) -> None:
    model = tiny_model("llama")
    both = engine(model, "both")
    prompt = mixed_prompts(seed=9, vocab=1000, lengths=(50,))[0]
    both.add_request("ref", prompt, P)
    expected = run_all(both)["ref"]
    pre = engine(model, "prefill")
    dec = engine(model, "decode")
    first, _ = disaggregated(pre, dec, "a", prompt)
    assert first == expected
    # Second time, the decode side already holds the first 3 full blocks.
    tokens, chunks = disaggregated(pre, dec, "b", prompt)
    assert tokens == expected
    assert min(c.first_block for c in chunks) == 3
    assert dec.pool.num_used == 0


def test_roles_refuse_the_wrong_calls(tiny_model: ModelFactory) -> None:
    model = tiny_model("llama")
    pre = engine(model, "prefill")
    with pytest.raises(WrongRole):
        pre.add_request("a", [5, 6, 7], P)
    with pytest.raises(WrongRole):
        pre.reserve("a", [5, 6, 7], P)
    dec = engine(model, "decode")
    with pytest.raises(WrongRole):
        dec.add_request("a", [5, 6, 7], P, kv_sink=lambda c: None)
    with pytest.raises(UnknownRequest):
        dec.start_decode("nope", 5)


def test_unclaimed_reservation_expires_and_abort_frees(tiny_model: ModelFactory) -> None:
    model = tiny_model("llama")
    dec = Engine(EngineConfig(str(model), device="cpu", role="decode", num_kv_blocks=64, reservation_ttl_s=0.0))
    dec.reserve("a", list(range(3, 40)), P)
    assert dec.pool.num_used == 3
    dec.step()  # expiry happens on the next step
    assert dec.pool.num_used == 0
    dec2 = engine(model, "decode")
    dec2.reserve("b", list(range(3, 40)), P)
    assert dec2.abort("b") and dec2.pool.num_used == 0
    assert not dec2.abort("b")


def test_import_refuses_to_overwrite_decode_side_prefix_blocks(tiny_model: ModelFactory) -> None:
    import torch

    from tandem.sampling import InvalidRequest

    model = tiny_model("llama")
    pre = engine(model, "prefill")
    dec = engine(model, "decode")
    prompt = mixed_prompts(seed=9, vocab=1000, lengths=(50,))[0]
    disaggregated(pre, dec, "a", prompt)  # the decode side now caches 3 full blocks
    res = dec.reserve("b", prompt, P)
    assert res.skip_blocks == 3
    shape = (1, 16, 2, 16)
    with pytest.raises(InvalidRequest, match="already holds"):
        dec.import_kv(KVChunk("b", 0, 0, torch.randn(shape), torch.randn(shape)))
    dec.import_kv(KVChunk("b", 0, 3, torch.randn(shape), torch.randn(shape)))  # past the prefix: fine
    dec.abort("b")
    assert dec.pool.num_used == 0
