"""`tandem model ...` subcommands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tandem.models.config import ARCHS, DTYPES


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    model = subparsers.add_parser("model", help="work with model folders")
    model_sub = model.add_subparsers(dest="model_command", metavar="MODEL_COMMAND")
    model.set_defaults(func=lambda _args: _usage(model))

    tiny = model_sub.add_parser(
        "make-tiny",
        help="write a tiny random-weight model in Hugging Face format",
        description="Write a tiny random-weight model (config.json, model.safetensors, "
        "a trained byte-level BPE tokenizer and a chat template) to DIR.",
    )
    tiny.add_argument("dir", metavar="DIR", type=Path, help="destination folder (new or empty)")
    tiny.add_argument("--arch", choices=ARCHS, default="llama")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--dtype", choices=DTYPES, default="float32")
    tiny.add_argument("--tie-embeddings", action="store_true", help="share embedding and lm_head")
    tiny.set_defaults(func=_make_tiny)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _make_tiny(args: argparse.Namespace) -> int:
    # torch loads only when the command runs, keeping `tandem --help` fast.
    from tandem.models.tiny import write_tiny_model

    try:
        folder = write_tiny_model(
            args.dir,
            arch=args.arch,
            seed=args.seed,
            dtype=args.dtype,
            tie_embeddings=args.tie_embeddings,
        )
    except (FileExistsError, ValueError) as exc:
        print(f"tandem model make-tiny: {exc}", file=sys.stderr)
        return 1
    print(folder)
    return 0
