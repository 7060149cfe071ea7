"""The router over real workers (tiny model, float32, CPU): the disaggregated
path equals the colocated path equals transformers for concurrent greedy
requests; a client that hangs up frees blocks on both workers within a second;
a decode worker killed mid-stream gives the client an error within seconds and
later requests succeed on the other decode worker. One set of processes per module."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "router"))
from processes import RouterProc, Worker, stopping, wait_idle

from tandem.models.tiny import ensure_tiny_model
from tandem.tokenizer import Tokenizer

PREFILL_TOKEN = 'tandem_worker_tokens_total{phase="prefill"}'


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):  # type: ignore[no-untyped-def]
    model = ensure_tiny_model()
    logs = tmp_path_factory.mktemp("logs")
    prefill = Worker(model, "prefill", logs)
    decodes = [Worker(model, "decode", logs), Worker(model, "decode", logs)]
    with stopping(prefill, *decodes):
        for w in (prefill, *decodes):
            w.wait()
        disagg = RouterProc([prefill, *decodes], model, logs, "--min-prompt-tokens", "8")
        coloc = RouterProc(decodes, model, logs, "--min-prompt-tokens", "100000")
        with stopping(disagg, coloc):
            disagg.wait()
            coloc.wait()
            yield {"model": model, "prefill": prefill, "decodes": decodes, "disagg": disagg, "coloc": coloc}


def _complete(url: str, prompt: list[int], n: int) -> dict:  # type: ignore[type-arg]
    r = requests.post(f"{url}/v1/completions", json={"prompt": prompt, "max_tokens": n, "temperature": 0,
                                                      "ignore_eos": True}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _hf_greedy(model_dir: Path, prompt: list[int], n: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(ids).logits[0, -1].argmax())
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


def test_disaggregated_equals_colocated_equals_transformers(cluster) -> None:  # type: ignore[no-untyped-def]
    prompts = [[(i * 37 + j * 11) % 1000 + 10 for j in range(20 + 7 * i)] for i in range(4)]
    n = 12
    prefill_before = cluster["prefill"].metric(PREFILL_TOKEN)
    with ThreadPoolExecutor(8) as pool:
        d = list(pool.map(lambda p: _complete(cluster["disagg"].url, p, n), prompts))
        c = list(pool.map(lambda p: _complete(cluster["coloc"].url, p, n), prompts))
    # Every prompt was prefilled on the prefill worker (the disaggregated path ran).
    assert cluster["prefill"].metric(PREFILL_TOKEN) - prefill_before >= sum(len(p) for p in prompts)
    tok = Tokenizer.from_dir(cluster["model"])
    for prompt, dr, cr in zip(prompts, d, c, strict=True):
        expected = tok.decode(_hf_greedy(cluster["model"], prompt, n))
        assert dr["choices"][0]["text"] == cr["choices"][0]["text"] == expected
        assert dr["usage"]["completion_tokens"] == cr["usage"]["completion_tokens"] == n
        assert dr["usage"]["prompt_tokens"] == len(prompt)


def test_client_disconnect_frees_blocks_on_both_workers(cluster) -> None:  # type: ignore[no-untyped-def]
    workers = [cluster["prefill"], *cluster["decodes"]]
    baseline = {w.address: w.load().kv_blocks_used for w in workers}
    prompt = [(j * 13) % 1000 + 10 for j in range(300)]
    body = {"prompt": prompt, "max_tokens": 1500, "temperature": 0, "ignore_eos": True, "stream": True}
    with requests.post(f"{cluster['disagg'].url}/v1/completions", json=body, stream=True, timeout=60) as r:
        assert r.status_code == 200
        lines = (line for line in r.iter_lines(decode_unicode=True) if line)
        assert next(lines).startswith("data: ")
        busy = {w.address: w.load() for w in cluster["decodes"]}
        assert any(s.running for s in busy.values()), busy
    hung_up = time.monotonic()
    state = wait_idle(workers, 1.0, baseline)
    assert state == {a: (0, 0, baseline[a]) for a in state}, state
    assert time.monotonic() - hung_up < 1.5


def test_decode_worker_killed_mid_stream(cluster) -> None:  # type: ignore[no-untyped-def]
    url = cluster["disagg"].url
    body = {"prompt": [11, 12, 13], "max_tokens": 1500, "temperature": 0, "ignore_eos": True, "stream": True}
    with requests.post(f"{url}/v1/completions", json=body, stream=True, timeout=60) as r:
        assert r.status_code == 200
        lines = (line for line in r.iter_lines(decode_unicode=True) if line)
        next(lines)
        victim = next(w for w in cluster["decodes"] if w.load().running)
        killed = time.monotonic()
        victim.kill()
        rest = list(lines)
        assert time.monotonic() - killed < 5
    assert any('"error"' in line for line in rest), rest[-3:]
    assert rest[-1] == "data: [DONE]"
    survivor = next(w for w in cluster["decodes"] if w is not victim)
    for i in range(3):
        out = _complete(url, [20 + i, 21, 22, 23, 24, 25, 26, 27, 28, 29], 4)
        assert out["usage"]["completion_tokens"] == 4
    assert survivor.load().kv_blocks_total > 0
