"""What to start: pure planning of worker processes (no I/O)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerSpec:
    """One worker process; `argv` needs the address it listens on."""

    name: str  # "prefill-0", "decode-1", "both-0"
    role: str
    model: str
    device: str  # "cpu" | "cuda" (the process sees only its own GPU)
    gpu: str | None = None  # CUDA_VISIBLE_DEVICES value, None on CPU
    options: tuple[str, ...] = ()  # extra `tandem worker` flags

    def argv(self, host: str, port: int, metrics_port: int | None = None) -> tuple[str, ...]:
        """`tandem` arguments (after the program name)."""
        metrics = ("--metrics-port", str(metrics_port)) if metrics_port is not None else ()
        return (
            "worker",
            "--model", self.model,
            "--role", self.role,
            "--host", host,
            "--port", str(port),
            *metrics,
            "--device", self.device,
            *self.options,
        )  # fmt: skip

    def env(self) -> dict[str, str]:
        return {} if self.gpu is None else {"CUDA_VISIBLE_DEVICES": self.gpu}


def worker_roles(prefill: int, decode: int) -> list[str]:
    """Roles to start: `prefill` 0 means colocated (`both`) workers only."""
    if prefill < 0 or decode < 1:
        raise ValueError(f"need prefill >= 0 and decode >= 1, got {prefill} and {decode}")
    if prefill == 0:
        return ["both"] * decode
    return ["prefill"] * prefill + ["decode"] * decode


def plan_workers(
    model: str,
    roles: Sequence[str],
    gpus: Sequence[str],
    options: tuple[str, ...] = (),
) -> list[WorkerSpec]:
    """One spec per role; with GPUs, worker i gets GPU i (wrapping around when
    there are more workers than GPUs, which then share)."""
    counts: dict[str, int] = {}
    specs = []
    for i, role in enumerate(roles):
        n = counts[role] = counts.get(role, -1) + 1
        gpu = gpus[i % len(gpus)] if gpus else None
        device = "cuda" if gpu is not None else "cpu"
        specs.append(WorkerSpec(f"{role}-{n}", role, model, device, gpu, options))
    return specs


def visible_gpus(environ: Mapping[str, str], gpu_count: int) -> list[str]:
    """GPU ids a child may be given: CUDA_VISIBLE_DEVICES if set, else 0..count-1."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    return [str(i) for i in range(gpu_count)]


def count_gpus() -> int:
    """NVIDIA GPUs on this host (from /proc; no CUDA initialisation, no torch)."""
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (the OS picks); the child binds it moments later."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports free right now (held open together while picking)."""
    with contextlib.ExitStack() as stack:
        socks = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            for _ in range(count)
        ]
        for s in socks:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
