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
functions, so ``dpiat-jax --help`` only pays for importing the package itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from collections.abc import Callable, Sequence

__all__ = ["SUBCOMMANDS", "Subcommand", "build_parser", "main", "subcommand"]


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


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per registered subcommand."""
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
    """Entry point of the ``dpiat-jax`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    name = getattr(args, "_subcommand", None)
    if name is None:
        parser.print_help()
        return 2
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return int(SUBCOMMANDS[name].run(args) or 0)


def _command_line(args: argparse.Namespace) -> str:
    return "dpiat-jax " + " ".join(shlex.quote(a) for a in args.argv)


# ---------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------


def _demo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="runs/demo", help="output directory (default: %(default)s)"
    )
    parser.add_argument(
        "--seeds", type=int, default=3, help="seeds of the target training (default: %(default)s)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="shortened mode for tests (tiny models and epochs)"
    )


@subcommand(
    "demo",
    help="train on digits, transfer to a deeper network, compare with random init",
    add_arguments=_demo_args,
    description=(
        "Offline demonstration on scikit-learn's 8x8 digits: trains a small ResNet, "
        "transfers it into a deeper one, trains that for one epoch from the transfer and "
        "from a random init over several seeds, prints the matching report and both "
        "accuracies, and writes a plot of the learning curves."
    ),
)
def _demo(args: argparse.Namespace) -> int:
    from dpiat_jax.demo import run_demo

    run_demo(out_dir=args.out, seeds=args.seeds, quick=args.quick)
    return 0


# ---------------------------------------------------------------------------
# experiment
# ---------------------------------------------------------------------------


def _experiment_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config",
        help="a JSON config file, or a shipped config name: digits, mnist1d, cifar10, cifar100",
    )
    parser.add_argument(
        "--out", default=None, help="output directory (default: runs/experiments/<config name>)"
    )
    parser.add_argument("--repetitions", type=int, default=None, help="override: seeds per run")
    parser.add_argument(
        "--epochs",
        type=int,
        nargs="+",
        default=None,
        help="override: the list of epoch budgets E, e.g. --epochs 1 4",
    )
    parser.add_argument(
        "--max-pairs", type=int, default=None, help="keep only the first N pairs (for tests)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="shortened protocol: 512/256 examples, sources 2 epochs, E=1, one seed",
    )
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="rerun every target training instead of reusing finished runs (runs.jsonl); "
        "source checkpoints are still reused",
    )


@subcommand(
    "experiment",
    help="run the transfer-vs-random protocol of a config (ratios, Spearman, plots)",
    add_arguments=_experiment_args,
    description=(
        "Pretrains each source once (cached as an Orbax checkpoint in OUT/sources), trains "
        "every target E epochs from the DPIAT transfer and from a random init for each seed, "
        "and writes runs.csv, summary.csv, results.md, ratios.png and similarity.png to OUT."
    ),
)
def _experiment(args: argparse.Namespace) -> int:
    import os

    from dpiat_jax.experiment import load_config, run_experiment

    config = load_config(args.config)
    out = args.out or os.path.join("runs", "experiments", config.name)
    run_experiment(
        config,
        out,
        repetitions=args.repetitions,
        epochs=args.epochs,
        max_pairs=args.max_pairs,
        quick=args.quick,
        resume=not args.no_resume,
        command=_command_line(args),
    )
    return 0


# ---------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------


def _methods_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a JSON config file or a shipped config name")
    parser.add_argument(
        "--out",
        default=None,
        help="the experiment's output folder, whose sources and run cache are reused "
        "(default: runs/experiments/<config name>)",
    )
    parser.add_argument(
        "--methods-dir",
        default="results/methods",
        help="where the tables go (default: %(default)s)",
    )
    parser.add_argument("--matchers", nargs="+", default=None, help="default: all")
    parser.add_argument("--tensor-rules", nargs="+", default=None, help="default: all")
    parser.add_argument(
        "--combinations",
        default=None,
        help="explicit MATCHER:RULE list, e.g. dp:clip,flat:clip (instead of the grid)",
    )
    parser.add_argument("--repetitions", type=int, default=None, help="override: seeds per run")
    parser.add_argument("--epochs", type=int, nargs="+", default=None, help="override: E list")
    parser.add_argument("--max-pairs", type=int, default=None, help="keep the first N pairs")
    parser.add_argument("--quick", action="store_true", help="shortened protocol (tests)")
    parser.add_argument("--quiet", action="store_true", help="log only combination summaries")
    parser.add_argument("--note", default=None, help="a remark recorded with the tables")


@subcommand(
    "methods",
    help="the methods table: mean ratio of every matcher x tensor rule on a config",
    add_arguments=_methods_args,
    description=(
        "Runs the protocol of `experiment` once per (matcher, tensor_rule) combination, "
        "reusing OUT's sources, random-init runs and cached transfer runs, and writes "
        "METHODS_DIR/<config>.md/.csv and METHODS_DIR/README.md (all configs side by "
        "side, and whether a combination beats the default dp + clip)."
    ),
)
def _methods(args: argparse.Namespace) -> int:
    import os

    from dpiat_jax.experiment import load_config
    from dpiat_jax.methods import all_combinations, parse_combinations, run_methods

    config = load_config(args.config)
    out = args.out or os.path.join("runs", "experiments", config.name)
    if args.combinations:
        combos = parse_combinations(args.combinations)
    else:
        combos = all_combinations(args.matchers, args.tensor_rules)
    run_methods(
        config,
        out,
        combinations=combos,
        methods_dir=args.methods_dir,
        repetitions=args.repetitions,
        epochs=args.epochs,
        max_pairs=args.max_pairs,
        quick=args.quick,
        command=_command_line(args),
        note=args.note,
        verbose=not args.quiet,
    )
    return 0


from dpiat_jax import cli_checkpoints  # noqa: E402, F401  (transfer, match, rank)

if __name__ == "__main__":
    sys.exit(main())
