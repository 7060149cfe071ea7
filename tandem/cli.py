"""The `tandem` command: the only reader of argv.

Each subsystem contributes its subcommands through a `register(subparsers)`
function in its own `command` module; this file only wires them together so
that `tandem --help` stays fast (modules import torch lazily).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from tandem import env

# Modules that expose `register(subparsers) -> None`. Each parser sets
# `func=callable(args) -> int` via `set_defaults`.
_COMMAND_MODULES = (
    "tandem.models.command",  # tandem model make-tiny
    "tandem.worker.command",  # tandem worker
    "tandem.router.command",  # tandem router, tandem bench serve
    "tandem.serve_command",  # tandem serve
    "tandem.operator.command",  # tandem operator
    "tandem.sim.command",  # tandem sim
    "tandem.audit.command",  # tandem audit
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem",
        description="Disaggregated prefill/decode LLM serving.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency, not an absent subsystem
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    environment = env.read()
    logging.basicConfig(
        level=environment.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
