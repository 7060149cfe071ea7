"""OpenAI request bodies -> a validated, frozen `ApiRequest` (pure, no I/O).

The parser is strict about types (a bool is not an integer, a list of prompts
with more than one entry is refused) and lenient about unknown fields, as
OpenAI-compatible servers are: clients send extra keys that we may ignore.
Features the engine does not have (n > 1, logprobs, penalties, echo) are
refused with a message naming the field instead of being silently dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from tandem.router.errors import BadRequest, ModelNotFound
from tandem.sampling import SamplingParams

Kind = Literal["completion", "chat"]
_ROLES = ("system", "user", "assistant", "tool", "developer")
#: Default max_tokens for /v1/completions (OpenAI's documented default).
COMPLETION_DEFAULT_MAX_TOKENS = 16


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class ApiRequest:
    kind: Kind
    model: str | None
    prompt_text: str | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    messages: tuple[ChatMessage, ...] = ()
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0
    stream: bool = False
    include_usage: bool = False
    priority: str | None = None


def parse_json(raw: bytes) -> dict[str, object]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object, got {type(body).__name__}")
    return body


def parse_request(kind: Kind, body: dict[str, object]) -> ApiRequest:
    """Validate one /v1/completions or /v1/chat/completions body."""
    _refuse_unsupported(kind, body)
    common = _common_fields(kind, body)
    if kind == "completion":
        text, ids = _prompt(body)
        return ApiRequest(kind=kind, prompt_text=text, prompt_token_ids=ids, **common)  # type: ignore[arg-type]
    return ApiRequest(kind=kind, messages=_messages(body), **common)  # type: ignore[arg-type]


def check_model(requested: str | None, served: str) -> None:
    if requested is not None and requested != served:
        raise ModelNotFound(requested, served)


def sampling_params(
    req: ApiRequest, prompt_len: int, max_model_len: int, eos_token_ids: tuple[int, ...]
) -> SamplingParams:
    """Sampling for a tokenized request, checked against the model's context."""
    if prompt_len < 1:
        raise BadRequest("the prompt is empty; it must contain at least one token", param="prompt")
    if prompt_len >= max_model_len:
        raise BadRequest(
            f"the prompt has {prompt_len} tokens but the model's context is {max_model_len} "
            f"tokens (at least one must remain for the completion)",
            param="messages" if req.kind == "chat" else "prompt",
            code="context_length_exceeded",
        )
    room = max_model_len - prompt_len
    max_tokens = req.max_tokens
    if max_tokens is None:
        max_tokens = room if req.kind == "chat" else min(COMPLETION_DEFAULT_MAX_TOKENS, room)
    elif max_tokens > room:
        raise BadRequest(
            f"max_tokens is {max_tokens} but the prompt ({prompt_len} tokens) leaves only "
            f"{room} of the model's {max_model_len}-token context",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_k=req.top_k,
        top_p=req.top_p,
        seed=req.seed,
        stop_token_ids=req.stop_token_ids,
        stop=req.stop,
        ignore_eos=req.ignore_eos,
        min_tokens=req.min_tokens,
        eos_token_ids=eos_token_ids,
    )


def _common_fields(kind: Kind, body: dict[str, object]) -> dict[str, object]:
    stream = _opt_bool(body, "stream") or False
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise BadRequest("stream_options must be an object", param="stream_options")
        if not stream:
            raise BadRequest("stream_options is only allowed when stream is true", param="stream_options")
        include_usage = _opt_bool(options, "include_usage", "stream_options.include_usage") or False
    max_tokens = _opt_int(body, "max_tokens")
    if kind == "chat" and body.get("max_completion_tokens") is not None:
        max_tokens = _opt_int(body, "max_completion_tokens")
    name = "max_completion_tokens" if kind == "chat" and body.get("max_completion_tokens") is not None else "max_tokens"
    if max_tokens is not None and max_tokens < 1:
        raise BadRequest(f"{name} must be >= 1, got {max_tokens}", param=name)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("model must be a string", param="model")
    temperature = _opt_number(body, "temperature")
    top_p = _opt_number(body, "top_p")
    top_k = _opt_int(body, "top_k")
    min_tokens = _opt_int(body, "min_tokens")
    priority = body.get("priority")
    if priority is not None and not isinstance(priority, str):
        raise BadRequest("priority must be the name of a priority class (a string)", param="priority")
    return {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": 1.0 if temperature is None else temperature,
        "top_p": 1.0 if top_p is None else top_p,
        "top_k": 0 if top_k is None else top_k,
        "seed": _opt_int(body, "seed"),
        "stop": _stop(body),
        "stop_token_ids": _int_list(body, "stop_token_ids"),
        "ignore_eos": _opt_bool(body, "ignore_eos") or False,
        "min_tokens": 0 if min_tokens is None else min_tokens,
        "stream": stream,
        "include_usage": include_usage,
        "priority": priority,
    }


def _refuse_unsupported(kind: Kind, body: dict[str, object]) -> None:
    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n != 1):
        raise BadRequest(f"n must be 1 (one choice per request is supported), got {n!r}", param="n")
    best_of = body.get("best_of")
    if best_of is not None and best_of != 1:
        raise BadRequest(f"best_of must be 1, got {best_of!r}", param="best_of")
    logprobs = body.get("logprobs")
    if logprobs not in (None, False) or body.get("top_logprobs") not in (None, 0):
        raise BadRequest("logprobs are not supported by this server", param="logprobs")
    if body.get("echo") not in (None, False):
        raise BadRequest("echo is not supported by this server", param="echo")
    for name in ("presence_penalty", "frequency_penalty"):
        value = body.get(name)
        if value not in (None, 0, 0.0) or isinstance(value, bool):
            raise BadRequest(f"{name} is not supported (only 0), got {value!r}", param=name)
    if body.get("logit_bias") not in (None, {}):
        raise BadRequest("logit_bias is not supported by this server", param="logit_bias")
    if body.get("suffix") not in (None, ""):
        raise BadRequest("suffix is not supported by this server", param="suffix")
    if kind == "chat" and body.get("tools") not in (None, []):
        raise BadRequest("tools are not supported by this server", param="tools")


def _prompt(body: dict[str, object]) -> tuple[str | None, tuple[int, ...] | None]:
    if "prompt" not in body or body["prompt"] is None:
        raise BadRequest("prompt is required", param="prompt")
    prompt = body["prompt"]
    if isinstance(prompt, str):
        return prompt, None
    if not isinstance(prompt, list):
        raise BadRequest(
            "prompt must be a string, a list of token ids, or a one-element list of either",
            param="prompt",
        )
    if prompt and all(isinstance(p, (str, list)) for p in prompt):
        if len(prompt) != 1:
            raise BadRequest(
                f"prompt lists of {len(prompt)} prompts are not supported; send one prompt per request",
                param="prompt",
            )
        prompt = prompt[0]
        if isinstance(prompt, str):
            return prompt, None
    return None, _token_ids(prompt, "prompt")


def _token_ids(value: object, name: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise BadRequest(f"{name} must be a list of token ids", param=name)
    for t in value:
        if not isinstance(t, int) or isinstance(t, bool) or t < 0:
            raise BadRequest(f"{name} must contain non-negative integer token ids, got {t!r}", param=name)
    return tuple(value)


def _messages(body: dict[str, object]) -> tuple[ChatMessage, ...]:
    raw = body.get("messages")
    if not isinstance(raw, list):
        raise BadRequest("messages is required and must be a list", param="messages")
    if not raw:
        raise BadRequest("messages must contain at least one message", param="messages")
    return tuple(_message(m, i) for i, m in enumerate(raw))


def _message(m: object, i: int) -> ChatMessage:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise BadRequest(f"{where} must be an object", param=where)
    role = m.get("role")
    if role not in _ROLES:
        raise BadRequest(f"{where}.role must be one of {', '.join(_ROLES)}, got {role!r}", param=f"{where}.role")
    content = m.get("content")
    if content is None and role == "assistant":
        content = ""
    if isinstance(content, list):
        content = "".join(_text_part(p, f"{where}.content[{j}]") for j, p in enumerate(content))
    if not isinstance(content, str):
        raise BadRequest(f"{where}.content must be a string or a list of text parts", param=f"{where}.content")
    return ChatMessage(role=str(role), content=content)


def _text_part(part: object, where: str) -> str:
    if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
        raise BadRequest(f"{where} must be a text part {{'type': 'text', 'text': ...}}", param=where)
    return str(part["text"])


def _stop(body: dict[str, object]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest("stop must be a non-empty string or a list of non-empty strings", param="stop")
    if len(stop) > 16:
        raise BadRequest(f"stop accepts at most 16 strings, got {len(stop)}", param="stop")
    return tuple(stop)


def _int_list(body: dict[str, object], name: str) -> tuple[int, ...]:
    value = body.get(name)
    return () if value is None else _token_ids(value, name)


def _opt_bool(body: dict[str, object], name: str, label: str | None = None) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"{label or name} must be a boolean, got {value!r}", param=label or name)
    return value


def _opt_int(body: dict[str, object], name: str) -> int | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise BadRequest(f"{name} must be an integer, got {value!r}", param=name)
    return value


def _opt_number(body: dict[str, object], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        raise BadRequest(f"{name} must be a number, got {value!r}", param=name)
    return float(value)
