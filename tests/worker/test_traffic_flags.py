"""Traffic-control knobs of `tandem worker` and the wire's urgency field."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest

from tandem.rpc.v1 import worker_pb2
from tandem.sampling import InvalidRequest
from tandem.worker import wire
from tandem.worker.command import WorkerConfig, config_from_args, register
from tandem.worker.request import Urgency


def _model(tmp_path: Path) -> str:
    (tmp_path / "config.json").write_text("{}")
    return str(tmp_path)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["worker", *argv])


def test_flags_reach_the_engine_config(tmp_path: Path) -> None:
    argv = [
        "--model",
        _model(tmp_path),
        "--scheduling-policy",
        "fcfs",
        "--priority-aging",
        "5",
        "--tpot-slo",
        "0.05",
        "--min-prefill-tokens",
        "32",
    ]
    engine = config_from_args(_parse(argv)).engine_config()
    assert (
        engine.scheduling_policy,
        engine.priority_aging_s,
        engine.tpot_slo_s,
        engine.min_prefill_tokens,
    ) == ("fcfs", 5.0, 0.05, 32)


def test_defaults_are_priority_scheduling_without_a_tpot_cap(tmp_path: Path) -> None:
    engine = config_from_args(_parse(["--model", _model(tmp_path)])).engine_config()
    assert (engine.scheduling_policy, engine.priority_aging_s, engine.tpot_slo_s) == (
        "priority",
        30.0,
        None,
    )


@pytest.mark.parametrize(
    ("overrides", "option"),
    [
        ({"tpot_slo_s": 0.0}, "--tpot-slo"),
        ({"priority_aging_s": -1.0}, "--priority-aging"),
        ({"min_prefill_tokens": 0}, "--min-prefill-tokens"),
        ({"scheduling_policy": "lifo"}, "scheduling_policy"),
    ],
)
def test_bad_knobs_name_the_option(tmp_path: Path, overrides: dict, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        WorkerConfig(model=_model(tmp_path), **overrides)


def test_urgency_deadline_moves_onto_the_worker_clock() -> None:
    assert wire.urgency_from_pb(
        worker_pb2.Urgency(priority=7, ttft_seconds_left=0.25), 100.0
    ) == Urgency(7, 100.25)
    # Absent (the message's defaults): priority 0 and no deadline, as before the field existed.
    assert wire.urgency_from_pb(worker_pb2.GenerateRequest().urgency, 5.0) == Urgency(0, math.inf)


def test_urgency_out_of_range_names_the_field() -> None:
    with pytest.raises(InvalidRequest, match=r"urgency\.priority"):
        wire.urgency_from_pb(worker_pb2.Urgency(priority=2_000_000_000), 0.0)
    with pytest.raises(InvalidRequest, match="ttft_seconds_left"):
        wire.urgency_from_pb(worker_pb2.Urgency(ttft_seconds_left=float("nan")), 0.0)
