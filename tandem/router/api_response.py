"""OpenAI response bodies and server-sent-event chunks (pure)."""

from __future__ import annotations

import json

from tandem.router.api_request import Kind


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, object]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def full_body(
    kind: Kind, request_id: str, created: int, model: str, text: str, finish: str | None, use: dict[str, object]
) -> dict[str, object]:
    if kind == "chat":
        choice: dict[str, object] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish,
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    return {"id": request_id, "object": obj, "created": created, "model": model, "choices": [choice], "usage": use}


def chunk(
    kind: Kind,
    request_id: str,
    created: int,
    model: str,
    text: str,
    finish: str | None,
    *,
    role: bool = False,
    with_usage_field: bool = False,
) -> dict[str, object]:
    """One streamed chunk. With include_usage every chunk carries `usage: null`
    and a final chunk with empty choices carries the counts (`usage_chunk`)."""
    if kind == "chat":
        delta: dict[str, object] = {"content": text}
        if role:
            delta["role"] = "assistant"
        choice: dict[str, object] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    body: dict[str, object] = {
        "id": request_id, "object": obj, "created": created, "model": model, "choices": [choice]
    }
    if with_usage_field:
        body["usage"] = None
    return body


def usage_chunk(kind: Kind, request_id: str, created: int, model: str, use: dict[str, object]) -> dict[str, object]:
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    return {"id": request_id, "object": obj, "created": created, "model": model, "choices": [], "usage": use}


def sse(payload: dict[str, object] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


SSE_DONE = sse("[DONE]")


def models_list(name: str, created: int, max_model_len: int | None) -> dict[str, object]:
    entry: dict[str, object] = {"id": name, "object": "model", "created": created, "owned_by": "tandem"}
    if max_model_len is not None:
        entry["max_model_len"] = max_model_len
    return {"object": "list", "data": [entry]}
