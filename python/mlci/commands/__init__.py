"""Command-line front ends, one module per `python -m mlci <command>`. They parse, call the library, print."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mlci.config import DEFAULT_CONFIG, Config, load_config
from mlci.errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would exit 2 itself; keep one error path
        raise UsageError(f"{self.prog}: {message}")


def parser(command: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser with the options every command shares: --config and key=value overrides."""
    p = _Parser(prog=f"mlci {command}", description=description)
    p.add_argument("--config", default=DEFAULT_CONFIG, help="path to mlci.toml (default: %(default)s)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="override a config value")
    return p


def parse(p: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    return p.parse_intermixed_args(list(argv))


def config_of(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)
