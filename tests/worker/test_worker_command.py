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
    assert cfg.role == "decode" and cfg.port == 9 and cfg.kv_transports == ("cuda_ipc", "shm", "grpc")
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
