"""`m2df` command line: a dispatcher. Each subcommand lives beside the code it drives."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Modules that each define `add_cli(subparsers)` for their own subcommands.
COMMAND_MODULES = (
    "m2df_hf.convert",
    "m2df_hf.evaluation",
    "m2df_hf.hub",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m2df",
        description="CLIP-M2DF few-shot action recognition: convert, evaluate, predict, export, push.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(module_name)
        module.add_cli(subparsers)
    return parser


# User errors: our ValueErrors (bad input, named), and files or folders that do not exist.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. A user error prints ``m2df COMMAND: error: ...`` and returns 2 (``M2DF_DEBUG=1``: raise)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        if os.environ.get("M2DF_DEBUG", "") not in ("", "0"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__  # one line
        print(f"m2df {args.command}: error: {message} (M2DF_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
