"""``dpiat-jax demo``, ``experiment``, ``methods``, ``evidence`` and ``lm-growth``: the
experiment subcommands.

The experiment modules (models, training, data) are imported inside the subcommand
functions, so ``dpiat-jax --help`` only pays for importing the package itself.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from dpiat_jax.cli.registry import command_line, subcommand

__all__: list[str] = []


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    """Add ``--data-dir``: read a TFDS dataset from a local folder, never downloading."""
    parser.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="a local TFDS data directory that holds the config's dataset (cifar10, "
        "cifar100) in the array_record format, e.g. one made by `tfds build`; the dataset "
        "is read from there and never downloaded, and the folder is not part of the run "
        "cache keys. The offline configs (digits, mnist1d) ignore it",
    )


def _without_missing_data(command: str, body: Callable[[], int]) -> int:
    """Run ``body``; a dataset missing from ``--data-dir`` becomes one message and status 2.

    Returns:
        ``body()``'s exit status, or 2 with the message (the folder searched and how to
        prepare the dataset there) on stderr instead of a traceback.
    """
    from dpiat_jax.experiments.data import DataNotFoundError

    try:
        return body()
    except DataNotFoundError as err:
        print(f"dpiat-jax {command}: error: {err}", file=sys.stderr)
        return 2


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
    from dpiat_jax.experiments.demo import run_demo

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
    _add_data_dir(parser)


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

    from dpiat_jax.experiments.config import load_config
    from dpiat_jax.experiments.protocol import run_experiment

    config = load_config(args.config)
    out = args.out or os.path.join("runs", "experiments", config.name)

    def body() -> int:
        run_experiment(
            config,
            out,
            repetitions=args.repetitions,
            epochs=args.epochs,
            max_pairs=args.max_pairs,
            quick=args.quick,
            resume=not args.no_resume,
            command=command_line(args),
            data_dir=args.data_dir,
        )
        return 0

    return _without_missing_data("experiment", body)


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
    _add_data_dir(parser)


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

    from dpiat_jax.experiments.config import load_config
    from dpiat_jax.experiments.methods import all_combinations, parse_combinations, run_methods

    config = load_config(args.config)
    out = args.out or os.path.join("runs", "experiments", config.name)
    if args.combinations:
        combos = parse_combinations(args.combinations)
    else:
        combos = all_combinations(args.matchers, args.tensor_rules)

    def body() -> int:
        run_methods(
            config,
            out,
            combinations=combos,
            methods_dir=args.methods_dir,
            repetitions=args.repetitions,
            epochs=args.epochs,
            max_pairs=args.max_pairs,
            quick=args.quick,
            command=command_line(args),
            note=args.note,
            verbose=not args.quiet,
            data_dir=args.data_dir,
        )
        return 0

    return _without_missing_data("methods", body)


# ---------------------------------------------------------------------------
# lm-growth
# ---------------------------------------------------------------------------


def _evidence_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a JSON config file or a shipped config name")
    parser.add_argument(
        "--out", default=None, help="output directory (default: results/evidence/<config name>)"
    )
    parser.add_argument("--seeds", type=int, default=None, help="override: seeds per start")
    parser.add_argument("--max-pairs", type=int, default=None, help="keep the first N pairs")
    parser.add_argument("--quick", action="store_true", help="shortened protocol (tests)")
    parser.add_argument(
        "--no-resume", action="store_true", help="ignore runs cached in OUT/runs.jsonl"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    _add_data_dir(parser)


@subcommand(
    "evidence",
    help="learning curves of transfer against random init and controls, with intervals",
    add_arguments=_evidence_args,
    description=(
        "The evidence protocol: every start of a target (random, transfer with each matcher, "
        "transfer from an untrained source, random init trained for the source's compute "
        "too, and each source trained on from itself) is trained one run per seed and "
        "evaluated at fixed step budgets; writes results.md (paired area ratios with 95%% "
        "bootstrap intervals, Spearman's rho of similarity and coverage against the gain), "
        "results.json, runs.csv, pairs.csv, curves.png, ratios.png and similarity.png. "
        "Settings: the config's `evidence` object."
    ),
)
def _evidence(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dpiat_jax.experiments.config import load_config
    from dpiat_jax.experiments.evidence_report import run_evidence

    def body() -> int:
        out = args.out or str(Path("results") / "evidence" / load_config(args.config).name)
        run_evidence(
            args.config,
            out,
            seeds=args.seeds,
            max_pairs=args.max_pairs,
            quick=args.quick,
            resume=not args.no_resume,
            data_dir=args.data_dir,
            log=(lambda m: None) if args.quiet else None,
            command=command_line(args),
        )
        print((Path(out) / "results.md").read_text())
        return 0

    return _without_missing_data("evidence", body)


def _lm_growth_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="results/lm_growth", help="output directory (default: %(default)s)"
    )
    parser.add_argument("--seeds", type=int, default=None, help="override: runs per arm")
    parser.add_argument("--steps", type=int, default=None, help="override: steps per arm")
    parser.add_argument("--arms", nargs="+", default=None, help="default: all arms")
    parser.add_argument("--quick", action="store_true", help="tiny models and steps (tests)")


@subcommand(
    "lm-growth",
    help="grow a byte-level GPT trained on the standard library's source, by transfer",
    add_arguments=_lm_growth_args,
    description=(
        "Trains a small GPT on bytes of the Python standard library's source, grows it "
        "(2 -> 4 layers, width 64 -> 128 by default) with each arm (random init, transfer "
        "with dp and cross, transfer from an untrained source, function-preserving growth) "
        "and trains every grown model "
        "for the same steps over several seeds; writes runs.csv, results.md, results.json "
        "and curves.png (test loss against steps)."
    ),
)
def _lm_growth(args: argparse.Namespace) -> int:
    import dataclasses

    from dpiat_jax.experiments.lm_growth import GrowthSettings, run_growth, write_growth

    settings = GrowthSettings().quick() if args.quick else GrowthSettings()
    overrides = {"seeds": args.seeds, "target_steps": args.steps}
    settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v})
    result = run_growth(settings, arms=args.arms)
    out = write_growth(result, args.out, command_line(args))
    print((out / "results.md").read_text())
    return 0
