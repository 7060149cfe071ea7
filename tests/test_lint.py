"""Static checks run with the tests: ruff, mypy and the import-linter layering
contracts (operator/router/worker independent; worker -> models -> kernels;
no torch or triton in the control plane)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / tool), *args], cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize(
    "tool,args",
    [
        ("ruff", ("check", "tandem", "tests", "bench", "hack")),
        ("mypy", ()),
        ("lint-imports", ()),
    ],
)
def test_static_check_passes(tool: str, args: tuple[str, ...]) -> None:
    result = run(tool, *args)
    assert result.returncode == 0, f"{tool} failed:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
