"""`tandem worker` argv -> WorkerConfig: every bad value is refused with a
message naming the option."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tandem.worker.command import WorkerConfig, config_from_args, register


def _model(tmp_path: Path) -> str:
    (tmp_path / "config.json").write_text("{}")
    return str(tmp_path)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["worker", *argv])


def test_defaults_and_engine_config(tmp_path: Path) -> None:
    cfg = config_from_args(_parse(["--model", _model(tmp_path), "--role", "decode", "--port", "9"]))
    assert (
        cfg.role == "decode" and cfg.port == 9 and cfg.kv_transports == ("cuda_ipc", "shm", "grpc")
    )
    engine = cfg.engine_config()
    assert engine.role == "decode" and engine.model == cfg.model and engine.block_size == 16


@pytest.mark.parametrize(
    ("overrides", "option"),
    [
        ({"port": 70000}, "--port"),
        ({"metrics_port": -1}, "--metrics-port"),
        ({"role": "chef"}, "--role"),
        ({"kv_transports": ("shm",)}, "--kv-transports"),
        ({"kv_transports": ("grpc", "pigeon")}, "--kv-transports"),
        ({"kv_streams": 0}, "--kv-streams"),
        ({"block_size": 12}, "block_size"),
    ],
)
def test_bad_values_name_the_option(tmp_path: Path, overrides: dict, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        WorkerConfig(model=_model(tmp_path), **overrides)


def test_missing_model_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--model"):
        WorkerConfig(model=str(tmp_path / "nope"))


def test_worker_serves_health_and_metrics_and_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    from tandem.launch.spec import free_ports
    from tandem.models.tiny import ensure_tiny_model

    model = ensure_tiny_model(tmp_path / "tiny-llama")
    port, metrics_port = free_ports(2)
    cmd = ["worker", "--model", str(model), "--role", "decode", "--device", "cpu"]
    cmd += ["--port", str(port), "--metrics-port", str(metrics_port), "--num-kv-blocks", "32"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tandem.cli", *cmd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TANDEM_HOME": str(tmp_path)},
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{metrics_port}/health", timeout=2
                ) as r:
                    health = json.load(r)
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, "worker exited during start-up"
                assert time.monotonic() < deadline, "worker not up within 120 s"
                time.sleep(0.2)
        assert health == {"status": "serving", "role": "decode"}
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert "tandem_worker_kv_blocks_total 32.0" in metrics
        assert 'tandem_kv_transfer_bytes_total{transport="shm"}' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0
