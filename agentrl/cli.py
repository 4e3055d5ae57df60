"""The ``agentrl`` command line.

Each subcommand is a small function; imports of heavy modules stay inside them so ``agentrl --help``
is instant. A usage error prints one line naming what was wrong and exits with code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_envs(args: argparse.Namespace) -> int:
    from agentrl.registry import list_envs

    entries = list_envs()
    width = max((len(name) for name, _ in entries), default=0)
    for name, description in entries:
        print(f"{name:<{width}}  {description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-parser per command."""
    parser = argparse.ArgumentParser(
        prog="agentrl",
        description="Reinforcement learning of LLM agents on long, multi-step, tool-using tasks.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    envs = commands.add_parser("envs", help="list the registered environments, one line each")
    envs.set_defaults(func=_cmd_envs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agentrl`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"agentrl {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
