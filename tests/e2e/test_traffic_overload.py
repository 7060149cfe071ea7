"""Overload with two classes through a real router and worker (tiny model, CPU):
with priorities on, interactive requests keep their TTFT SLO while batch
requests absorb the delay; with priorities off (the router's fcfs policy, so
workers see no priorities either) the same load makes interactive requests
miss it. Both runs in one test, against the same worker, so the difference is
the mechanism and nothing else.

The SLO is set from the machine itself: twice the TTFT of one batch prompt
alone (the mean of two, after a warm-up). A small step budget (16 tokens) turns each
1000-token batch prompt into 63 prefill steps, while two interactive prompts
fit in one step. The interactive requests come once at least four batch
prompts wait in the engine. Priorities on: an interactive request waits for
the step in flight and its own, a few steps (plus the worker's RPC handling,
which on a busy CPU competes with the engine thread), against an SLO of ~126
steps. Off: it queues behind the batch prompts that came first, at least
4 x 63 steps.
The classes carry no TTFT SLO on the router here, so deadline admission sheds
nothing and both runs serve every request: what differs is the scheduling.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

sys.path.insert(0, str(Path(__file__).parents[1] / "router"))
from processes import RouterProc, Worker, stopping

from tandem.models.tiny import ensure_tiny_model

CLASSES = "interactive:100,batch:10"
BATCH, BATCH_TOKENS = 8, 1000
INTERACTIVE, INTERACTIVE_TOKENS = 4, 8


@pytest.fixture(scope="module")
def pool(tmp_path_factory):  # type: ignore[no-untyped-def]
    model = ensure_tiny_model()
    logs = tmp_path_factory.mktemp("logs")
    worker = Worker(
        model, "both", logs, num_kv_blocks=2048, extra=("--max-num-batched-tokens", "16")
    )
    with stopping(worker):
        worker.wait()
        on = RouterProc([worker], model, logs, "--priority-classes", CLASSES)
        off = RouterProc(
            [worker], model, logs, "--priority-classes", CLASSES, "--traffic-policy", "fcfs"
        )
        with stopping(on, off):
            on.wait()
            off.wait()
            yield {"worker": worker, "on": on, "off": off}


def _ttft(url: str, cls: str, prompt: list[int], max_tokens: int) -> tuple[int, float]:
    """(HTTP status, seconds to the first streamed token) of one completion."""
    body: dict[str, Any] = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "priority": cls,
    }
    start = time.monotonic()
    first = float("inf")
    with requests.post(f"{url}/v1/completions", json=body, stream=True, timeout=300) as r:
        if r.status_code != 200:
            return r.status_code, first
        for line in r.iter_lines():
            first_chunk = first == float("inf") and line.startswith(b"data: {")
            if first_chunk and json.loads(line[6:])["choices"][0].get("text") is not None:
                first = time.monotonic() - start
    return 200, first


def _prompt(run: int, i: int, n: int) -> list[int]:
    # Distinct first tokens: no prompt shares a prefix-cache block with another, in any run.
    return [10 + run * 100 + i] + [(run * 31 + i * 7 + j) % 1000 + 200 for j in range(n - 1)]


Results = list[tuple[int, float]]


def _overload(url: str, worker: Worker, run: int) -> tuple[Results, Results, str]:
    with ThreadPoolExecutor(BATCH + INTERACTIVE) as ex:
        start = time.monotonic()
        batch = [
            ex.submit(_ttft, url, "batch", _prompt(run, i, BATCH_TOKENS), 4) for i in range(BATCH)
        ]
        seen = (0, 0)
        # The urgent requests come once half the batch prompts wait in the engine behind the
        # one it is prefilling (requests reach it one by one, and the first may be done
        # before the last arrives on a busy machine).
        while time.monotonic() < start + 60:
            load = worker.load()
            seen = (load.waiting, load.running)
            if load.waiting >= BATCH // 2:
                break
            time.sleep(0.02)
        note = f"run {run}: urgent requests sent after {time.monotonic() - start:.2f}s, engine (waiting, running) {seen}"
        chat = [
            ex.submit(_ttft, url, "interactive", _prompt(run, 50 + i, INTERACTIVE_TOKENS), 4)
            for i in range(INTERACTIVE)
        ]
        return [f.result() for f in chat], [f.result() for f in batch], note


def test_priorities_keep_the_interactive_ttft_slo_and_fcfs_breaks_it(pool) -> None:  # type: ignore[no-untyped-def]
    _ttft(
        pool["on"].url, "batch", _prompt(8, 0, BATCH_TOKENS), 1
    )  # warm-up: first-call costs stay out
    alone = (
        sum(_ttft(pool["on"].url, "batch", _prompt(9, i, BATCH_TOKENS), 1)[1] for i in range(2)) / 2
    )
    slo = 2 * alone

    chat_on, batch_on, note_on = _overload(pool["on"].url, pool["worker"], run=1)
    chat_off, batch_off, note_off = _overload(pool["off"].url, pool["worker"], run=2)

    report = (
        f"{note_on}; {note_off}; SLO {slo:.3f}s (one batch prompt alone {alone:.3f}s); interactive TTFT on "
        f"{[round(t, 3) for _, t in chat_on]}, off {[round(t, 3) for _, t in chat_off]}; batch TTFT on "
        f"{[round(t, 3) for _, t in batch_on]}, off {[round(t, 3) for _, t in batch_off]}"
    )
    print(report)
    assert all(s == 200 for s, _ in chat_on + batch_on + chat_off + batch_off), report
    # Priorities on: every interactive request within the SLO ...
    assert all(t <= slo for _, t in chat_on), report
    # ... and the batch requests absorbed the delay: they waited, and still all finished.
    assert max(t for _, t in batch_on) > max(t for _, t in chat_on), report
    # Priorities off: the same load makes most interactive requests miss it.
    assert sum(t > slo for _, t in chat_off) >= INTERACTIVE - 1, report
