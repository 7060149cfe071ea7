"""One streamed request against an OpenAI-compatible /v1/completions, timed."""

from __future__ import annotations

import json
import random
import time

import aiohttp

from tandem.loadgen.report import Result
from tandem.loadgen.trace import TraceRequest


def prompt_ids(n: int, rng: random.Random, lo: int, hi: int) -> list[int]:
    """Random ids from [lo, hi): exact length, no accidental prefix sharing between requests."""
    return [rng.randrange(lo, hi) for _ in range(n)]


async def send(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    req: TraceRequest,
    prompt: list[int],
    started: float,
    timeout_s: float,
) -> Result:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": req.output_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent = time.monotonic()
    ttft: float | None = None
    chunks = 0
    usage_tokens: int | None = None
    try:
        async with session.post(
            f"{url}/v1/completions", json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            if resp.status != 200:
                text = await resp.text()
                return Result(sent - started, req.prompt_tokens, 0, None, None, f"HTTP {resp.status}: {text[:200]}")
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    return Result(sent - started, req.prompt_tokens, chunks, ttft, None,
                                  f"stream error: {event['error'].get('message', '')[:200]}")
                if event.get("choices"):
                    if ttft is None:
                        ttft = time.monotonic() - sent
                    chunks += 1
                if event.get("usage"):
                    usage_tokens = int(event["usage"]["completion_tokens"])
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Result(sent - started, req.prompt_tokens, chunks, ttft, None, f"{type(exc).__name__}: {exc}")
    e2e = time.monotonic() - sent
    n = usage_tokens if usage_tokens is not None else chunks
    return Result(sent - started, req.prompt_tokens, n, ttft, e2e, requested_tokens=req.output_tokens)
