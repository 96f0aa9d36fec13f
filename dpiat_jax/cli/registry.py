"""The subcommand registry of the ``dpiat-jax`` command line.

Each subcommand is one function taking the parsed arguments and returning an exit code,
registered with :func:`subcommand` together with a function that adds its arguments to
its own ``argparse`` subparser. Subcommand modules import this registry only, and
:mod:`dpiat_jax.cli.main` imports them, so there is no import circle.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from collections.abc import Callable

__all__ = ["SUBCOMMANDS", "Subcommand", "command_line", "subcommand"]


@dataclasses.dataclass(frozen=True)
class Subcommand:
    """A registered subcommand: its name, help text, argument setup and entry function."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str = ""


SUBCOMMANDS: dict[str, Subcommand] = {}
"""Registered subcommands by name, in registration order (the order ``--help`` lists)."""


def subcommand(
    name: str,
    *,
    help: str,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    description: str = "",
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Decorator registering ``fn(args) -> exit code`` as the subcommand ``name``."""

    def register(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        if name in SUBCOMMANDS:
            raise ValueError(f"Subcommand {name!r} is already registered.")
        SUBCOMMANDS[name] = Subcommand(
            name=name,
            help=help,
            add_arguments=add_arguments or (lambda parser: None),
            run=fn,
            description=description or (fn.__doc__ or help),
        )
        return fn

    return register


def command_line(args: argparse.Namespace) -> str:
    """The command line that produced ``args`` (as the user would type it)."""
    return "dpiat-jax " + " ".join(shlex.quote(a) for a in args.argv)
