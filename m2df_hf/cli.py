"""`m2df` command line: a dispatcher. Each subcommand lives beside the code it drives."""

from __future__ import annotations

import argparse
import importlib
import sys

# (command, module that defines `add_cli(subparsers)` for it)
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
