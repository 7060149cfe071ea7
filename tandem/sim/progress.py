"""A progress bar on stderr for long runs (only when stderr is a terminal or asked for)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(
        self, label: str, enabled: bool | None = None, stream: TextIO | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.label = label
        self.start = time.monotonic()
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.5:
            return
        self._last = now
        frac = done / total if total else 1.0
        bar = "#" * int(30 * frac)
        eta = (now - self.start) * (1 - frac) / frac if frac > 0 else 0.0
        self.stream.write(
            f"\r{self.label} [{bar:<30}] {frac:6.1%} {done}/{total} requests arrived, eta {eta:.0f}s "
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write(
                f"\r{self.label}: done in {time.monotonic() - self.start:.1f}s" + " " * 40 + "\n"
            )
            self.stream.flush()
