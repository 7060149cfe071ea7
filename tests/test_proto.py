"""The committed generated code matches the .proto files, and the contract's
basic promises (explicit presence for sampling fields) hold."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "tandem" / "rpc" / "v1"


def _load_generator():  # hack/ is not a package: load the script as a module
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "hack" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    gen = _load_generator()
    written = gen.generate(tmp_path)
    assert {p.name for p in written} == {
        f"{stem}{suffix}"
        for stem in ("worker", "router")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
    }
    stale = [
        p.name for p in written if (COMMITTED / p.name).read_text() != p.read_text()
    ]
    assert not stale, f"run `make proto`: stale generated files {stale}"
    extra = {p.name for p in COMMITTED.glob("*_pb2*")} - {p.name for p in written}
    assert not extra, f"generated files without a proto: {extra}"


def test_generated_modules_import_under_tandem_rpc() -> None:
    from tandem.rpc.v1 import router_pb2, worker_pb2, worker_pb2_grpc

    assert hasattr(worker_pb2_grpc, "WorkerServiceStub")
    req = router_pb2.RouterGenerateRequest(sampling=worker_pb2.SamplingParams(max_tokens=3))
    assert req.sampling.max_tokens == 3


def test_zero_temperature_is_distinguishable_from_absent() -> None:
    from tandem.rpc.v1 import worker_pb2

    greedy = worker_pb2.SamplingParams(temperature=0.0)
    default = worker_pb2.SamplingParams()
    assert greedy.HasField("temperature")
    assert not default.HasField("temperature")
    decoded = worker_pb2.SamplingParams.FromString(greedy.SerializeToString())
    assert decoded.HasField("temperature") and decoded.temperature == 0.0
