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

__all__ = [
    "EXTRAS",
    "SUBCOMMANDS",
    "Subcommand",
    "command_line",
    "missing_extra_message",
    "subcommand",
]

EXTRAS: dict[str, frozenset[str]] = {
    "experiments": frozenset(
        {"tensorflow_datasets", "sklearn", "mnist1d", "optax", "orbax", "matplotlib", "tqdm", "PIL"}
    ),
    "cli": frozenset({"orbax"}),
}
"""The optional extras of ``pyproject.toml`` -> the top-level modules each brings."""


@dataclasses.dataclass(frozen=True)
class Subcommand:
    """A registered subcommand: its name, help text, argument setup and entry function.

    Attributes:
        name: the word after ``dpiat-jax``.
        help: one line for ``dpiat-jax --help``.
        add_arguments: adds the subcommand's arguments to its subparser.
        run: ``run(args) -> exit code``.
        description: the text of ``dpiat-jax NAME --help``.
        extra: the ``pyproject.toml`` extra the subcommand needs (a key of :data:`EXTRAS`).
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str = ""
    extra: str = "experiments"


SUBCOMMANDS: dict[str, Subcommand] = {}
"""Registered subcommands by name, in registration order (the order ``--help`` lists)."""


def subcommand(
    name: str,
    *,
    help: str,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    description: str = "",
    extra: str = "experiments",
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Return a decorator registering ``fn(args) -> exit code`` as the subcommand ``name``.

    Args:
        name: the subcommand's name.
        help: one line for ``dpiat-jax --help``.
        add_arguments: adds its arguments to its subparser (none when ``None``).
        description: the text of ``dpiat-jax NAME --help`` (default: ``fn``'s docstring).
        extra: the ``pyproject.toml`` extra it needs, named when a module is missing.

    Returns:
        The decorator; it returns ``fn`` unchanged.

    Raises:
        ValueError: (when decorating) if ``name`` is registered already.
    """
    if extra not in EXTRAS:
        raise ValueError(f"Unknown extra {extra!r}; known: {sorted(EXTRAS)}.")

    def register(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        if name in SUBCOMMANDS:
            raise ValueError(f"Subcommand {name!r} is already registered.")
        SUBCOMMANDS[name] = Subcommand(
            name=name,
            help=help,
            add_arguments=add_arguments or (lambda parser: None),
            run=fn,
            description=description or (fn.__doc__ or help),
            extra=extra,
        )
        return fn

    return register


def command_line(args: argparse.Namespace) -> str:
    """Return the command line that produced ``args`` (as the user would type it).

    Args:
        args: parsed arguments with ``argv`` set by :func:`dpiat_jax.cli.main.main`.

    Returns:
        ``"dpiat-jax "`` followed by the shell-quoted arguments.
    """
    return "dpiat-jax " + " ".join(shlex.quote(a) for a in args.argv)


def missing_extra_message(command: Subcommand, err: ModuleNotFoundError) -> str | None:
    """Return the one-line error for a missing optional dependency, or ``None``.

    The message names the extra to install: the subcommand's own when it brings the
    missing module, otherwise the first extra that does (``match --plot`` needs
    matplotlib, which only ``[experiments]`` brings).

    Args:
        command: the subcommand that was running.
        err: the import error it raised.

    Returns:
        ``"dpiat-jax NAME: error: ..."``, or ``None`` when the missing module is not an
        optional dependency (then the error is a bug to show in full).
    """
    module = (err.name or "").split(".")[0]
    extras = [command.extra] + [e for e in EXTRAS if e != command.extra]
    extra = next((e for e in extras if module in EXTRAS[e]), None)
    if extra is None:
        return None
    return (
        f"dpiat-jax {command.name}: error: this command needs the optional dependency "
        f"{module!r}; install the [{extra}] extra: python -m pip install "
        f'"dpiat-jax[{extra}]" (or ".[{extra}]" in a checkout of the repository)'
    )
