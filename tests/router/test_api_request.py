from __future__ import annotations

import pytest

from tandem.router.api_request import (
    ApiRequest,
    check_model,
    parse_json,
    parse_request,
    sampling_params,
)
from tandem.router.errors import BadRequest, ModelNotFound
from tandem.sampling import InvalidRequest


@pytest.mark.parametrize(
    ("kind", "body", "param", "words"),
    [
        ("completion", {}, "prompt", "required"),
        ("completion", {"prompt": 5}, "prompt", "string"),
        ("completion", {"prompt": ["a", "b"]}, "prompt", "2 prompts"),
        ("completion", {"prompt": [1, -2]}, "prompt", "non-negative"),
        ("completion", {"prompt": [1, True]}, "prompt", "non-negative"),
        ("completion", {"prompt": "x", "n": 3}, "n", "n must be 1"),
        ("completion", {"prompt": "x", "n": "1"}, "n", "n must be 1"),
        ("completion", {"prompt": "x", "logprobs": 2}, "logprobs", "not supported"),
        ("chat", {"messages": [{"role": "user", "content": "x"}], "logprobs": True}, "logprobs", "not supported"),
        ("completion", {"prompt": "x", "echo": True}, "echo", "not supported"),
        ("completion", {"prompt": "x", "presence_penalty": 0.5}, "presence_penalty", "not supported"),
        ("completion", {"prompt": "x", "max_tokens": 0}, "max_tokens", ">= 1"),
        ("completion", {"prompt": "x", "max_tokens": 1.5}, "max_tokens", "integer"),
        ("completion", {"prompt": "x", "max_tokens": True}, "max_tokens", "integer"),
        ("chat", {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0},
         "max_completion_tokens", ">= 1"),
        ("chat", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "max_completion_tokens": 0},
         "max_completion_tokens", "max_completion_tokens must be >= 1"),
        ("completion", {"prompt": "x", "temperature": "hot"}, "temperature", "number"),
        ("completion", {"prompt": "x", "stop": 3}, "stop", "stop must be"),
        ("completion", {"prompt": "x", "stop": [""]}, "stop", "stop must be"),
        ("completion", {"prompt": "x", "stream": "yes"}, "stream", "boolean"),
        ("completion", {"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options", "stream is true"),
        ("completion", {"prompt": "x", "ignore_eos": 1}, "ignore_eos", "boolean"),
        ("completion", {"prompt": "x", "model": 7}, "model", "string"),
        ("completion", {"prompt": "x", "priority": 1}, "priority", "priority class"),
        ("chat", {}, "messages", "required"),
        ("chat", {"messages": []}, "messages", "at least one"),
        ("chat", {"messages": ["hi"]}, "messages[0]", "object"),
        ("chat", {"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "one of"),
        ("chat", {"messages": [{"role": "user"}]}, "messages[0].content", "string"),
        ("chat", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0]", "text part"),
        ("chat", {"messages": [{"role": "user", "content": "x"}], "tools": [{}]}, "tools", "not supported"),
    ],
)
def test_bad_bodies_name_the_field(kind, body, param, words) -> None:
    with pytest.raises(BadRequest) as err:
        parse_request(kind, body)
    assert err.value.param == param
    assert words in err.value.message


@pytest.mark.parametrize(
    ("kind", "body", "expected"),
    [
        ("completion", {"prompt": "hi"}, {"prompt_text": "hi"}),
        ("completion", {"prompt": ["hi"]}, {"prompt_text": "hi"}),
        ("completion", {"prompt": [1, 2]}, {"prompt_token_ids": (1, 2)}),
        ("completion", {"prompt": [[1, 2]]}, {"prompt_token_ids": (1, 2)}),
        ("completion", {"prompt": "x", "stop": "\n", "seed": 3, "top_k": 5}, {"stop": ("\n",), "seed": 3, "top_k": 5}),
        ("completion", {"prompt": "x", "stream": True, "stream_options": {"include_usage": True}},
         {"stream": True, "include_usage": True}),
        ("completion", {"prompt": "x", "n": 1, "logprobs": None, "presence_penalty": 0, "user": "u"}, {}),
        ("chat", {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
                  "max_completion_tokens": 7}, {"max_tokens": 7}),
    ],
)
def test_good_bodies(kind, body, expected) -> None:
    req = parse_request(kind, body)
    for key, value in expected.items():
        assert getattr(req, key) == value
    if kind == "chat":
        assert req.messages[0].content == "ab"


@pytest.mark.parametrize(
    ("raw", "words"),
    [(b"{", "not valid JSON"), (b"[1]", "JSON object"), (b"\xff\xfe", "not valid JSON"), (b"", "not valid JSON")],
)
def test_parse_json_errors(raw: bytes, words: str) -> None:
    with pytest.raises(BadRequest, match=words):
        parse_json(raw)


@pytest.mark.parametrize(
    ("kind", "max_tokens", "prompt_len", "ctx", "result"),
    [
        ("completion", None, 10, 100, 16),  # OpenAI's default
        ("completion", None, 90, 100, 10),  # default capped by the context
        ("chat", None, 10, 100, 90),  # chat: the rest of the context
        ("completion", 90, 10, 100, 90),
        ("completion", 91, 10, 100, "max_tokens"),
        ("completion", 1, 100, 100, "prompt"),
        ("chat", 1, 100, 100, "messages"),
        ("completion", 1, 0, 100, "prompt"),
    ],
)
def test_context_limits(kind, max_tokens, prompt_len, ctx, result) -> None:
    req = ApiRequest(kind=kind, model=None, max_tokens=max_tokens)
    if isinstance(result, int):
        assert sampling_params(req, prompt_len, ctx, (1,)).max_tokens == result
    else:
        with pytest.raises(BadRequest) as err:
            sampling_params(req, prompt_len, ctx, (1,))
        assert err.value.param == result


@pytest.mark.parametrize(("field", "value"), [("temperature", 101.0), ("top_p", 0.0), ("top_k", -2), ("min_tokens", -1)])
def test_sampling_validation_is_reused(field: str, value: object) -> None:
    req = ApiRequest(kind="completion", model=None, **{field: value})  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest) as err:
        sampling_params(req, 3, 100, ())
    assert err.value.field == field


def test_check_model() -> None:
    check_model(None, "m")
    check_model("m", "m")
    with pytest.raises(ModelNotFound, match="'x' does not exist"):
        check_model("x", "m")
