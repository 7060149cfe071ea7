"""`tandem audit` against a live pool: real workers and router (tiny model, CPU), real
load through the official openai client while the audit measures its window."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "router"))
from processes import RouterProc, Worker, stopping

from tandem.models.tiny import ensure_tiny_model

WORDS = ["alpha", "river", "stone", "light", "paper", "green", "seven", "cloud", "north"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):  # type: ignore[no-untyped-def]
    model = ensure_tiny_model()
    logs = tmp_path_factory.mktemp("logs")
    prefill, decode = Worker(model, "prefill", logs), Worker(model, "decode", logs)
    with stopping(prefill, decode):
        prefill.wait()
        decode.wait()
        router = RouterProc([prefill, decode], model, logs, "--min-prompt-tokens", "8")
        with stopping(router):
            router.wait()
            yield {"model": model, "prefill": prefill, "decode": decode, "router": router}


def _audit(pool: dict, out: Path, window: float) -> tuple[dict, str]:  # type: ignore[type-arg]
    argv = [sys.executable, "-m", "tandem.cli", "audit", "--window", str(window),
            "--router", pool["router"].url,
            "--worker", f"127.0.0.1:{pool['prefill'].metrics_port}",
            "--worker", f"127.0.0.1:{pool['decode'].metrics_port}",
            "--worker", "127.0.0.1:9",  # nothing listens there: named, not fatal
            "--ttft-slo", "5", "--tpot-slo", "1", "--out", str(out), "--png", str(out.with_suffix(".png"))]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text()), done.stdout


def test_audit_measures_a_loaded_pool(pool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    client = openai.OpenAI(base_url=f"{pool['router'].url}/v1", api_key="unused")
    stop, errors, finished = threading.Event(), [], []

    def load(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            # Distinct prompts: a repeated one would hit the decode worker's prefix cache
            # and run colocated, leaving the prefill worker idle.
            prompt = " ".join(rng.choice(WORDS) for _ in range(120))
            try:
                r = client.completions.create(model="tiny-llama", prompt=prompt, max_tokens=8)
                finished.append(r.usage.completion_tokens if r.usage else 0)
            except openai.OpenAIError as exc:  # pragma: no cover - reported below
                errors.append(repr(exc))

    threads = [threading.Thread(target=load, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)  # the window starts with requests in flight
        report, text = _audit(pool, tmp_path / "loaded.json", window=4.0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    print(text)
    assert not errors
    assert report["gpus"] == 2
    assert report["roles"]["prefill"]["workers"] == 1 and report["roles"]["decode"]["workers"] == 1
    assert report["requests"] > 0
    assert 0 < report["roles"]["prefill"]["busy"] <= 1
    assert 0 < report["roles"]["decode"]["busy"] <= 1
    assert 0 <= report["slo_attainment"]["ttft"] <= 1
    assert report["did_not_answer"] and "127.0.0.1:9" in report["did_not_answer"][0]
    assert "prefill/decode imbalance" in text
    assert (tmp_path / "loaded.png").stat().st_size > 1000


def test_audit_of_an_idle_pool_sees_nothing_busy(pool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    report, _ = _audit(pool, tmp_path / "idle.json", window=1.5)
    assert report["requests"] == 0
    assert report["roles"]["prefill"]["busy"] == 0 and report["roles"]["decode"]["busy"] == 0
    assert report["roles"]["prefill"]["need"] == 0 and report["roles"]["decode"]["need"] == 0
    assert report["slo_attainment"]["ttft"] is None
