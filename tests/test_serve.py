"""`tandem serve`: the plan, the restart policy, and a real start/stop on CPU
with the tiny model (SIGTERM leaves no child process behind)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tandem.launch.spec import free_port, free_ports, plan_workers, visible_gpus, worker_roles
from tandem.launch.supervisor import Supervisor, backoff_s, stop_all
from tandem.serve_command import ServeConfig

ROOT = Path(__file__).resolve().parent.parent


# ----- pure planning ------------------------------------------------------------
@pytest.mark.parametrize(
    ("prefill", "decode", "roles"),
    [
        (1, 1, ["prefill", "decode"]),
        (2, 3, ["prefill", "prefill", "decode", "decode", "decode"]),
        (0, 2, ["both", "both"]),
    ],
)
def test_worker_roles(prefill: int, decode: int, roles: list[str]) -> None:
    assert worker_roles(prefill, decode) == roles


def test_worker_roles_refuses_no_decode() -> None:
    with pytest.raises(ValueError, match="decode"):
        worker_roles(1, 0)


def test_plan_gives_each_worker_its_gpu_and_wraps_around() -> None:
    specs = plan_workers("/m", ["prefill", "decode", "decode"], gpus=["0", "1"])
    assert [s.name for s in specs] == ["prefill-0", "decode-0", "decode-1"]
    assert [s.env() for s in specs] == [
        {"CUDA_VISIBLE_DEVICES": "0"},
        {"CUDA_VISIBLE_DEVICES": "1"},
        {"CUDA_VISIBLE_DEVICES": "0"},
    ]
    assert all(s.device == "cuda" for s in specs)
    argv = specs[1].argv("127.0.0.1", 5000)
    assert (
        argv[:1] == ("worker",) and "--role" in argv and argv[argv.index("--role") + 1] == "decode"
    )
    assert argv[argv.index("--port") + 1] == "5000"


def test_worker_argv_carries_the_metrics_port() -> None:
    (spec,) = plan_workers("/m", ["both"], gpus=[])
    argv = spec.argv("0.0.0.0", 1, metrics_port=2)
    assert argv[argv.index("--metrics-port") + 1] == "2"
    assert "--metrics-port" not in spec.argv("0.0.0.0", 1)


def test_free_ports_are_distinct() -> None:
    ports = free_ports(8)
    assert len(set(ports)) == 8 and all(0 < p < 65536 for p in ports)


def test_plan_on_cpu_sets_no_gpu() -> None:
    (spec,) = plan_workers("/m", ["both"], gpus=[])
    assert spec.device == "cpu" and spec.env() == {}


@pytest.mark.parametrize(
    ("environ", "count", "expected"),
    [
        ({}, 0, []),
        ({}, 2, ["0", "1"]),
        ({"CUDA_VISIBLE_DEVICES": "3,5"}, 8, ["3", "5"]),
        ({"CUDA_VISIBLE_DEVICES": ""}, 8, []),
        ({"CUDA_VISIBLE_DEVICES": "-1"}, 8, []),
    ],
)
def test_visible_gpus(environ: dict, count: int, expected: list[str]) -> None:
    assert visible_gpus(environ, count) == expected


@pytest.mark.parametrize(
    ("n", "delay"), [(0, 0.0), (1, 1.0), (2, 2.0), (3, 4.0), (6, 30.0), (50, 30.0)]
)
def test_backoff(n: int, delay: float) -> None:
    assert backoff_s(n) == delay


def test_serve_passes_the_kv_pool_size_to_every_worker() -> None:
    import argparse

    from tandem.serve_command import config_from_args, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    config = config_from_args(parser.parse_args(["serve", "--num-kv-blocks", "64"]))
    (spec,) = plan_workers("/m", ["both"], gpus=[], options=config.worker_options)
    argv = spec.argv("127.0.0.1", 1)
    assert argv[argv.index("--num-kv-blocks") + 1] == "64"


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"prefill": -1}, "--prefill"),
        ({"decode": 0}, "--decode"),
        ({"port": 0}, "--port"),
        ({"device": "tpu"}, "--device"),
        ({"ray_address": "ray://x:1"}, "--ray-address"),
        ({"model": "/nonexistent"}, "--model"),
    ],
)
def test_serve_config_names_the_bad_option(kwargs: dict, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        ServeConfig(**kwargs)


# ----- supervision with fake processes -----------------------------------------
class _Fake:
    def __init__(self, name: str, crash_after_starts: int = 0) -> None:
        self.name = name
        self.starts = 1
        self.code: int | None = None
        self.crash_after_starts = crash_after_starts
        self.terminated = False

    def start(self) -> None:
        self.starts += 1
        self.code = None

    def poll(self) -> int | None:
        return self.code

    def terminate(self) -> None:
        self.terminated = True
        self.code = -15

    def kill(self) -> None:
        self.code = -9


async def test_supervisor_restarts_a_crashed_process_once_per_crash() -> None:
    crashed, healthy = _Fake("decode-0"), _Fake("prefill-0")
    crashed.code = 1
    stop = asyncio.Event()
    sup = Supervisor([crashed, healthy], poll_s=0.05)
    task = asyncio.create_task(sup.watch(stop))
    await asyncio.sleep(1.4)  # first restart comes after 1 s of backoff
    stop.set()
    await task
    assert crashed.starts == 2 and crashed.poll() is None
    assert healthy.starts == 1 and sup.restarts == {"decode-0": 1, "prefill-0": 0}


async def test_supervisor_survives_a_process_whose_status_cannot_be_read() -> None:
    class Flaky(_Fake):
        def __init__(self) -> None:
            super().__init__("decode-0")
            self.failures = 3

        def poll(self) -> int | None:
            if self.failures:
                self.failures -= 1
                raise TimeoutError("status call timed out")  # e.g. a slow Ray actor
            return self.code

    flaky = Flaky()
    stop = asyncio.Event()
    task = asyncio.create_task(Supervisor([flaky], poll_s=0.02).watch(stop))
    await asyncio.sleep(0.3)
    assert not task.done(), "the supervisor stopped watching"
    stop.set()
    await task
    assert flaky.failures == 0 and flaky.starts == 1


async def test_stop_all_terminates_everything() -> None:
    procs = [_Fake("a"), _Fake("b")]
    await stop_all(procs, timeout_s=1)
    assert all(p.terminated and p.poll() is not None for p in procs)


def test_child_refuses_to_run_when_its_launcher_is_gone() -> None:
    # A wrong parent pid stands for a launcher that died before the child could tie itself to it.
    result = subprocess.run(
        [sys.executable, "-m", "tandem.launch.child", "1", "--help"],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 1


# ----- the real thing ---------------------------------------------------------------
def _children(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _descendants(pid: int) -> set[int]:
    found, frontier = set(), {pid}
    while frontier:
        kids = set().union(*(_children(p) for p in frontier)) - found
        found |= kids
        frontier = kids
    return found


@pytest.mark.timeout(300)
@pytest.mark.parametrize("launcher", ["local", pytest.param("ray", marks=pytest.mark.slow)])
def test_serve_starts_prints_the_url_and_stops_without_orphans(
    tmp_path: Path, launcher: str
) -> None:
    if launcher == "ray":
        pytest.importorskip("ray")
    port = free_port()
    env = {**os.environ, "TANDEM_HOME": str(tmp_path / "home")}
    t0 = time.monotonic()
    cmd = ["serve", "--device", "cpu", "--port", str(port), "--launcher", launcher]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tandem.cli", *cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
        text=True,
    )
    descendants: set[int] = set()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        ready_s = time.monotonic() - t0
        assert line.strip() == f"Tandem serving tiny-llama at http://127.0.0.1:{port}/v1", line
        descendants = _descendants(proc.pid)
        if launcher == "local":
            assert len(_children(proc.pid)) == 3  # prefill worker, decode worker, router
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as resp:
            health = json.load(resp)
        assert {w["role"] for w in health["workers"]} == {"prefill", "decode"}
        print(f"tandem serve --launcher {launcher} ready in {ready_s:.1f}s")
    finally:
        t_stop = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        print(f"tandem serve --launcher {launcher} stopped in {time.monotonic() - t_stop:.1f}s")
    assert code == 0
    deadline = time.monotonic() + 10  # Ray's own daemons may take a moment after the driver
    while any(_alive(c) for c in descendants) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(c) for c in descendants)
    assert proc.stdout.read() == ""  # exactly one line on stdout
