"""Entry point of every launched process: tie its life to the launcher's, then
become `tandem ARGS...`.

    python -m tandem.launch.child PARENT_PID ARGS...

On Linux the kernel sends SIGTERM to the child when the launcher dies (even
by SIGKILL), so no worker outlives `tandem serve`. The setting survives exec.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m tandem.launch.child PARENT_PID ARGS...", file=sys.stderr)
        return 2
    parent = int(argv[0])
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the launcher died before prctl took effect
        return 1
    os.execv(sys.executable, [sys.executable, "-m", "tandem.cli", *argv[1:]])
    return 1  # unreachable: execv does not return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
