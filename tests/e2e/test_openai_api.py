"""The official `openai` client against `tandem serve` (tiny model, CPU), a
fuzz of malformed bodies, and the no-worker 503. One `tandem serve` per module."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parents[1] / "router"))
from processes import RouterProc, free_port

from tandem.models.tiny import ensure_tiny_model
from tandem.tokenizer import Tokenizer

MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def served(tmp_path_factory):  # type: ignore[no-untyped-def]
    model = ensure_tiny_model()
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tandem.cli", "serve", "--port", str(port), "--device", "cpu",
             "--min-prompt-tokens", "32"],
            stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        yield {"url": url, "model": model, "tok": Tokenizer.from_dir(model)}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def client(served) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=f"{served['url']}/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_list(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]


@pytest.mark.parametrize("prompt", ["Hello there", "A much longer prompt " * 6])  # colocated; disaggregated
def test_completion_usage(client: openai.OpenAI, served, prompt: str) -> None:  # type: ignore[no-untyped-def]
    out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=7, temperature=0,
                                    extra_body={"ignore_eos": True})
    n_prompt = len(served["tok"].encode(prompt))
    assert out.usage is not None
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (n_prompt, 7, n_prompt + 7)
    assert out.choices[0].finish_reason == "length"
    again = client.completions.create(model=MODEL, prompt=prompt, max_tokens=7, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert again.choices[0].text == out.choices[0].text  # greedy is deterministic


def test_streamed_chat_matches_unstreamed(client: openai.OpenAI, served) -> None:  # type: ignore[no-untyped-def]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=9, temperature=0,  # type: ignore[arg-type]
                                           extra_body={"ignore_eos": True})
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=9, temperature=0,  # type: ignore[arg-type]
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    usage = chunks[-1].usage
    n_prompt = len(served["tok"].encode_chat(messages))
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (n_prompt, 9)
    assert whole.usage is not None and whole.usage.total_tokens == n_prompt + 9


def test_stop_string_applied_on_text(client: openai.OpenAI) -> None:
    kwargs = {"model": MODEL, "prompt": "Once upon a time", "temperature": 0, "extra_body": {"ignore_eos": True}}
    full = client.completions.create(max_tokens=24, **kwargs).choices[0].text  # type: ignore[arg-type]
    stop = next(full[i : i + 2] for i in range(4, len(full) - 2) if full[i : i + 2].strip())
    cut = client.completions.create(max_tokens=24, stop=[stop], **kwargs).choices[0]  # type: ignore[arg-type]
    assert cut.text == full[: full.index(stop)]
    assert cut.finish_reason == "stop"
    streamed = client.completions.create(max_tokens=24, stop=stop, stream=True, **kwargs)  # type: ignore[arg-type]
    assert "".join(c.choices[0].text for c in streamed if c.choices) == cut.text


def test_client_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="n must be 1"):
        client.completions.create(model=MODEL, prompt="x", n=2)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-0", prompt="x")
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model=MODEL, prompt="x", max_tokens=100_000)


_junk = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5),
                  st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
_BAD_FIELDS = {
    "prompt": st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(),
                        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                        st.lists(st.text(min_size=1, max_size=3), min_size=2, max_size=4),
                        st.lists(st.integers(max_value=-1), min_size=1, max_size=3),
                        st.lists(st.integers(min_value=10**6), min_size=1, max_size=3)),
    "max_tokens": st.one_of(st.integers(max_value=0), st.integers(min_value=2048), st.floats(allow_nan=False),
                            st.text(max_size=3), st.booleans()),
    "temperature": st.one_of(st.floats(max_value=-0.01, allow_nan=False), st.floats(min_value=100.5, allow_nan=False),
                             st.text(max_size=3)),
    "top_p": st.one_of(st.floats(max_value=0.0, allow_nan=False), st.floats(min_value=1.01, allow_nan=False)),
    "top_k": st.integers(max_value=-2),
    "n": st.integers().filter(lambda v: v != 1),
    "stop": st.one_of(st.integers(), st.lists(st.integers(), min_size=1, max_size=2), st.just(""), st.just([""])),
    "stream": st.one_of(st.integers(), st.text(max_size=3)),
    "model": st.one_of(st.integers(), st.text(max_size=8).filter(lambda s: s != MODEL)),
    "logprobs": st.one_of(st.just(True), st.integers(min_value=1, max_value=5)),
    "seed": st.one_of(st.floats(allow_nan=False), st.text(max_size=3)),
}


@st.composite
def _bad_request(draw):  # type: ignore[no-untyped-def]
    kind = draw(st.sampled_from(["completions", "chat", "raw"]))
    if kind == "raw":
        raw = draw(st.one_of(st.binary(max_size=20), _junk.map(lambda v: json.dumps(v).encode())))
        return "completions", raw
    body: dict[str, object] = {"max_tokens": 2}
    if kind == "chat":
        body["messages"] = [{"role": "user", "content": "hi"}]
        if draw(st.booleans()):
            body["messages"] = draw(st.one_of(st.just([]), _junk.filter(lambda v: v is not None),
                                              st.lists(st.fixed_dictionaries({"role": st.text(max_size=4)}),
                                                       min_size=1, max_size=2)))
            return "chat/completions", json.dumps(body).encode()
    else:
        body["prompt"] = "hi"
    field = draw(st.sampled_from(sorted(_BAD_FIELDS)))
    if kind == "chat" and field == "prompt":
        field = "n"
    body[field] = draw(_BAD_FIELDS[field])
    return ("chat/completions" if kind == "chat" else "completions"), json.dumps(body).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=_bad_request())
def test_fuzzed_bad_bodies_get_openai_errors(served, case) -> None:  # type: ignore[no-untyped-def]
    path, raw = case
    r = requests.post(f"{served['url']}/v1/{path}", data=raw, headers={"Content-Type": "application/json"},
                      timeout=30)
    assert 400 <= r.status_code < 500, (raw, r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]


def test_good_request_after_the_fuzz(client: openai.OpenAI) -> None:
    out = client.completions.create(model=MODEL, prompt="still serving?", max_tokens=3, temperature=0,
                                    extra_body={"ignore_eos": True})
    assert out.usage is not None and out.usage.completion_tokens == 3


def test_no_workers_503_with_retry_after(tmp_path: Path) -> None:
    model = ensure_tiny_model()
    router = _router_without_workers(model, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = requests.post(f"{router.url}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=10)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, router.log.read_text()
                time.sleep(0.2)
        assert r.status_code == 503, r.text
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["type"] == "service_unavailable"
        assert r.elapsed.total_seconds() < 5
    finally:
        router.stop()


def _router_without_workers(model: Path, logdir: Path) -> RouterProc:
    class _Dead:
        address = f"127.0.0.1:{free_port()}"  # nothing listens there

    return RouterProc([_Dead()], model, logdir)  # type: ignore[list-item]
