"""Real worker and router processes for end-to-end tests (tiny model, CPU)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import requests

from tandem.rpc.v1 import worker_pb2 as pb
from tandem.rpc.v1 import worker_pb2_grpc as pb_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TANDEM_LOG_LEVEL": "WARNING"}
    with open(log, "wb") as f:
        return subprocess.Popen([sys.executable, "-m", "tandem.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)


def _wait(check, proc: subprocess.Popen[bytes], log: Path, what: str, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout} s:\n{log.read_text()[-3000:]}")


class Worker:
    def __init__(
        self, model: Path, role: str, logdir: Path, num_kv_blocks: int = 1024, extra: Sequence[str] = ()
    ) -> None:
        self.role = role
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.metrics_port = free_port()
        self.log = logdir / f"worker-{role}-{self.port}.log"
        self.proc = _spawn(["worker", "--model", str(model), "--role", role, "--host", "127.0.0.1",
                            "--port", str(self.port), "--metrics-port", str(self.metrics_port), "--device", "cpu",
                            "--dtype", "float32", "--num-kv-blocks", str(num_kv_blocks), *extra], self.log)

    def wait(self) -> None:
        _wait(lambda: self.load().kv_blocks_total > 0, self.proc, self.log, f"{self.role} worker")

    def load(self, prompt: Sequence[int] = ()) -> pb.LoadResponse:
        with grpc.insecure_channel(self.address) as ch:
            return pb_grpc.WorkerServiceStub(ch).Load(pb.LoadRequest(prompt_token_ids=list(prompt)), timeout=2)

    def metric(self, line_prefix: str) -> float:
        """The value of the first /metrics line starting with `line_prefix` (0 if absent)."""
        text = requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(line_prefix):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


class RouterProc:
    def __init__(self, workers: Sequence[Worker], model: Path, logdir: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = logdir / f"router-{self.port}.log"
        self.proc = _spawn(["router", "--workers", ",".join(w.address for w in workers), "--host", "127.0.0.1",
                            "--port", str(self.port), "--model", str(model), *extra], self.log)

    def wait(self) -> None:
        _wait(lambda: requests.get(f"{self.url}/health", timeout=2).status_code == 200, self.proc, self.log, "router")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def stopping(*things: Worker | RouterProc) -> Iterator[None]:
    try:
        yield
    finally:
        for t in things:
            if isinstance(t, Worker):
                t.kill()
            else:
                t.stop()


def wait_idle(workers: Sequence[Worker], timeout: float, baseline: dict[str, int]) -> dict[str, tuple[int, int, int]]:
    """Poll until every worker has nothing running or waiting and its used blocks are back to
    `baseline`; returns the last (running, waiting, used) per worker."""
    deadline = time.monotonic() + timeout
    while True:
        state = {}
        for w in workers:
            r = w.load()
            state[w.address] = (r.running, r.waiting, r.kv_blocks_used)
        if all(s == (0, 0, baseline[a]) for a, s in state.items()) or time.monotonic() > deadline:
            return state
        time.sleep(0.05)
