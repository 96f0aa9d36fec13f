"""The ``dpiat-jax`` command line.

Subcommands live in a registry: each is one function taking the parsed arguments and
returning an exit code, registered with :func:`subcommand` together with a function that
adds its arguments to its own ``argparse`` subparser. A new subcommand (say ``transfer``,
``match`` or ``rank`` on checkpoints) is one more decorated function::

    def _match_args(parser):
        parser.add_argument("source")
        ...

    @subcommand("match", help="...", add_arguments=_match_args)
    def _match(args) -> int:
        ...
        return 0

Subcommand modules (the models, training, plotting) are imported inside the subcommand
functions, so ``dpiat-jax --help`` only pays for importing the package itself, and works
without the optional dependencies. A subcommand whose extra is not installed exits with
status 2 and one line naming the extra to install (:func:`missing_extra_message`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from dpiat_jax.cli.registry import SUBCOMMANDS, missing_extra_message

__all__ = ["build_parser", "main"]

#: The modules whose import registers subcommands, in the order ``--help`` lists them.
SUBCOMMAND_MODULES = ("dpiat_jax.cli.experiments", "dpiat_jax.cli.checkpoints")
for _module in SUBCOMMAND_MODULES:
    importlib.import_module(_module)


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with one subparser per registered subcommand.

    Returns:
        The ``dpiat-jax`` parser; a parsed subcommand sets ``_subcommand`` to its name.
    """
    from dpiat_jax import __version__

    parser = argparse.ArgumentParser(
        prog="dpiat-jax",
        description=(
            "DPIAT inter-architecture parameter transfer for JAX/Flax: initialise a new "
            "architecture from a trained model of a different one."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in SUBCOMMANDS.values():
        sub = subparsers.add_parser(
            cmd.name,
            help=cmd.help,
            description=cmd.description,
        )
        cmd.add_arguments(sub)
        sub.set_defaults(_subcommand=cmd.name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dpiat-jax`` console script.

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit code: the subcommand's, 2 for usage errors and missing extras.
    """
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    name = getattr(args, "_subcommand", None)
    if name is None:
        parser.print_help()
        return 2
    args.argv = list(sys.argv[1:] if argv is None else argv)
    command = SUBCOMMANDS[name]
    try:
        return int(command.run(args) or 0)
    except ModuleNotFoundError as err:
        message = missing_extra_message(command, err)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
