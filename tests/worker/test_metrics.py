"""Worker metrics use the shared names and count what the engine did."""

from __future__ import annotations

from prometheus_client import REGISTRY, generate_latest

from tandem.sampling import SamplingParams
from tandem.worker.config import EngineConfig
from tandem.worker.engine import Engine
from tests.worker.conftest import ModelFactory


def value(name: str, **labels: str) -> float:
    v = REGISTRY.get_sample_value(name, labels)
    return 0.0 if v is None else v


def test_engine_counts_tokens_steps_and_blocks(tiny_model: ModelFactory) -> None:
    e = Engine(EngineConfig(str(tiny_model("llama")), device="cpu", num_kv_blocks=32, role="both"))
    pre0, dec0 = value("tandem_worker_tokens_total", phase="prefill"), value("tandem_worker_tokens_total", phase="decode")
    steps0 = value("tandem_worker_step_seconds_count", phase="decode")
    busy0 = value("tandem_worker_busy_seconds_total")
    e.add_request("a", list(range(3, 23)), SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True))
    e.step()
    assert value("tandem_worker_requests_running", role="both") == 1
    assert value("tandem_worker_kv_blocks_used") == 2
    while e.has_work():
        e.step()
    assert value("tandem_worker_tokens_total", phase="prefill") - pre0 == 20
    assert value("tandem_worker_tokens_total", phase="decode") - dec0 == 4  # 5 sampled, the last never fed back
    assert value("tandem_worker_step_seconds_count", phase="decode") - steps0 == 4
    assert value("tandem_worker_busy_seconds_total") > busy0
    assert value("tandem_worker_kv_blocks_total") == 32
    assert value("tandem_worker_kv_blocks_used") == 0
    text = generate_latest().decode()
    for name in ("tandem_worker_requests_waiting", "tandem_worker_busy_seconds_total", "tandem_worker_step_seconds_bucket"):
        assert name in text
