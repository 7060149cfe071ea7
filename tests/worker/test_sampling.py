"""Sampling and stopping through the offline LLM API."""

from __future__ import annotations

import pytest

from tandem import LLM, SamplingParams
from tandem.sampling import InvalidRequest
from tests.worker.conftest import ModelFactory


@pytest.fixture(scope="module")
def llm(tiny_model: ModelFactory) -> LLM:
    return LLM(str(tiny_model("llama")), device="cpu", num_kv_blocks=128)


def test_text_and_token_prompts_give_the_same_tokens(llm: LLM) -> None:
    greedy = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    ids = llm.tokenizer.encode("The quick brown fox")
    by_text, by_ids = llm.generate(["The quick brown fox", ids], greedy)
    assert by_text.token_ids == by_ids.token_ids and len(by_text.token_ids) == 6
    assert by_text.text == llm.tokenizer.decode(list(by_text.token_ids))


def test_seeded_sampling_is_reproducible_and_batch_independent(llm: LLM) -> None:
    p = SamplingParams(max_tokens=12, temperature=1.0, seed=1234, ignore_eos=True)
    alone = llm.generate("Once upon a time", p)[0].token_ids
    other = SamplingParams(max_tokens=12, temperature=1.0, seed=99, ignore_eos=True)
    batched = llm.generate(["Hello there", "Once upon a time", "def f(x):"], [other, p, other])
    assert batched[1].token_ids == alone
    different = llm.generate("Once upon a time", SamplingParams(max_tokens=12, temperature=1.0, seed=1, ignore_eos=True))
    assert different[0].token_ids != alone


def test_top_k_one_and_tiny_top_p_equal_greedy(llm: LLM) -> None:
    greedy = llm.generate("import numpy", SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))[0]
    k1 = llm.generate("import numpy", SamplingParams(max_tokens=8, temperature=0.8, top_k=1, seed=3, ignore_eos=True))[0]
    p_small = llm.generate("import numpy", SamplingParams(max_tokens=8, temperature=0.8, top_p=1e-6, seed=3, ignore_eos=True))[0]
    assert k1.token_ids == greedy.token_ids == p_small.token_ids


def test_stop_token_ids_and_max_tokens(llm: LLM) -> None:
    base = llm.generate("a b c", SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True))[0]
    stop_at = base.token_ids[3]
    first = base.token_ids.index(stop_at)
    out = llm.generate("a b c", SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True, stop_token_ids=(stop_at,)))[0]
    assert out.token_ids == base.token_ids[: first + 1] and out.finish_reason == "stop"
    assert base.finish_reason == "length"


def test_stop_string_truncates_text(llm: LLM) -> None:
    base = llm.generate("x = 1", SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))[0]
    assert len(base.text) > 4
    needle = base.text[2:4]
    out = llm.generate("x = 1", SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, stop=(needle,)))[0]
    assert out.finish_reason == "stop"
    assert out.text == base.text[: base.text.find(needle)]
    assert len(out.token_ids) < len(base.token_ids)


def test_min_tokens_suppresses_eos(llm: LLM) -> None:
    eos = llm.engine.model_info.eos_token_ids
    out = llm.generate("Hi", SamplingParams(max_tokens=8, min_tokens=8, temperature=1.5, seed=5, stop_token_ids=eos))[0]
    assert len(out.token_ids) == 8 and not set(out.token_ids) & set(eos)


def test_a_rejected_prompt_leaves_nothing_behind_for_the_next_batch(tiny_model: ModelFactory) -> None:
    llm = LLM(str(tiny_model("llama")), device="cpu", num_kv_blocks=64)
    p = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    with pytest.raises(InvalidRequest, match="vocabulary"):
        llm.generate([[5, 6, 7], [10**7]], p)  # the first prompt was admitted already
    # Its request must not linger in the engine and surface in this call.
    (out,) = llm.generate([[8, 9, 10]], p)
    assert len(out.token_ids) == 3 and out.finish_reason == "length"
    assert not llm.engine.has_work() and llm.engine.pool.num_used == 0
