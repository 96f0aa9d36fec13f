"""``dpiat-jax transfer | match | rank``: DPIAT on Orbax checkpoints from the command line.

A checkpoint is a directory written by
:func:`dpiat_jax.experiments.train.save_checkpoint` (or any Orbax
``StandardCheckpointer``) holding either a variables dict (``{"params": ...,
"batch_stats": ...}``), a bare params collection, or a
:class:`~dpiat_jax.experiments.train.TrainState`, of which ``params`` and
``batch_stats`` are used (the optimiser state is ignored). It is restored without a
target, as nested dicts.

An architecture is named by an import path ``module:Class`` (``dpiat_jax.models:CifarResNet``,
``my_project.nets:Net``) and its constructor arguments as a JSON object
(``--src-kwargs '{"depth": 20}'``); JSON lists become tuples. ``Class`` may also be any
callable returning a linen module (``dpiat_jax.models:get_model`` with
``'{"name": "cifar_resnet20"}'``), or a module instance (kwargs then ``clone`` it).

Examples::

    dpiat-jax transfer --src runs/r20 --src-def dpiat_jax.models:CifarResNet \\
        --src-kwargs '{"depth": 20}' --dst-def dpiat_jax.models:CifarResNet \\
        --dst-kwargs '{"depth": 32, "width": 2}' --out runs/r32w2_init
    dpiat-jax match ... --plot match.png
    dpiat-jax rank --src runs/a --src-def pkg:A --src runs/b --src-def pkg:B \\
        --src-kwargs '{"width": 2}' --dst-def pkg:C

Each ``--src`` starts a source; the ``--src-def``/``--src-kwargs`` after it belong to it.
Mistakes in the arguments (a wrong path, a class that cannot be imported, bad JSON, a
checkpoint that does not fit its definition) exit with status 2 and one line on stderr
naming the argument and the fix. Progress goes to stderr (``--quiet`` turns it off);
results (the report, the ranking) go to stdout.

Besides :mod:`dpiat_jax.cli`, only the standard library is imported at module level; Orbax,
the training module and the user's model modules load when a command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from dpiat_jax.cli.registry import subcommand

__all__ = ["CliError", "Source", "load_checkpoint_variables", "load_definition"]


class CliError(Exception):
    """A mistake in the command-line arguments; its message is shown as one line."""


@dataclasses.dataclass
class Source:
    """One ``--src CKPT --src-def module:Class [--src-kwargs JSON]`` group."""

    ckpt: str
    definition: str | None = None
    kwargs: str | None = None


# ---------------------------------------------------------------------------
# Progress and errors.
# ---------------------------------------------------------------------------


class _Progress:
    """Status lines on stderr: ``dpiat-jax transfer: [  0.3s] restoring CKPT``."""

    def __init__(self, command: str, quiet: bool) -> None:
        self.command, self.quiet = command, quiet
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if not self.quiet:
            elapsed = time.perf_counter() - self.start
            print(f"dpiat-jax {self.command}: [{elapsed:5.1f}s] {message}", file=sys.stderr)
            sys.stderr.flush()


def _one_line(text: str) -> str:
    """Joins a multi-line message into one line (``; `` between its lines)."""
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return "; ".join(lines)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _run_guarded(command: str, body: Callable[[], int]) -> int:
    """Runs ``body``; a :class:`CliError` becomes one line on stderr and exit status 2."""
    try:
        return body()
    except CliError as err:
        print(f"dpiat-jax {command}: error: {_one_line(str(err))}", file=sys.stderr)
        return 2


# Library argument names -> the command-line options they come from.
_ARG_NAMES = {
    "`src_params`": "--src",
    "`src_def`": "--src-def",
    "`dst_def`": "--dst-def",
    "`target`": "--dst-def",
    "`src`": "--src",
    "`dst`": "--dst-def",
    "sample_input=": "--input-shape",
    "sample_input": "--input-shape",
}


def _library_error(err: Exception, context: str) -> CliError:
    """A library ``ValueError``/``TypeError`` (which names the bad argument and the fix in
    Python terms) as a one-line :class:`CliError` in command-line terms."""
    message = _one_line(str(err))
    for name, option in _ARG_NAMES.items():
        message = message.replace(name, option)
    return CliError(f"{context}: {message}")


# ---------------------------------------------------------------------------
# Parsing the arguments.
# ---------------------------------------------------------------------------


def _parse_json_kwargs(text: str | None, option: str) -> dict[str, Any]:
    """``--src-kwargs``/``--dst-kwargs``: a JSON object; lists become tuples (hashable
    module fields)."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise CliError(
            f"{option} {text!r} is not valid JSON ({err.msg} at character {err.pos}); "
            f"""write a JSON object such as {option} '{{"depth": 20, "width": 2}}'"""
        ) from None
    if not isinstance(value, dict):
        raise CliError(
            f"{option} must be a JSON object of constructor arguments, got "
            f"""{type(value).__name__} {text!r}; e.g. {option} '{{"depth": 20}}'"""
        )

    def tuples(x: Any) -> Any:
        if isinstance(x, list):
            return tuple(tuples(v) for v in x)
        if isinstance(x, dict):
            return {k: tuples(v) for k, v in x.items()}
        return x

    return tuples(value)


def _module_classes(module: Any) -> list[str]:
    """Names of the linen Module classes (and callables) a Python module exposes."""
    import flax.linen as nn

    names = []
    for name in dir(module):
        obj = getattr(module, name, None)
        if not name.startswith("_") and isinstance(obj, type) and issubclass(obj, nn.Module):
            names.append(name)
    return sorted(names)


def _cwd_on_path() -> None:
    """Puts the working directory on ``sys.path`` (as ``python -m`` does), so that
    ``--src-def my_model:Net`` finds ``./my_model.py`` from the console script too."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)


def load_definition(spec: str, kwargs_json: str | None, option: str, kwargs_option: str) -> Any:
    """Import ``module:Class`` and build the linen module with the JSON kwargs.

    Args:
        spec: the import path ``module:Class`` (``Class`` may be a function returning a
            module, or a module instance).
        kwargs_json: the constructor arguments as a JSON object (lists become tuples).
        option: the option ``spec`` came from, for messages (``--src-def``).
        kwargs_option: the option ``kwargs_json`` came from (``--src-kwargs``).

    Returns:
        The unbound linen module.

    Raises:
        CliError: naming ``option``/``kwargs_option`` and the fix, when the path is
            malformed, the module or attribute cannot be imported, the kwargs do not fit
            the constructor, or the result is not a linen module.
    """
    import flax.linen as nn

    kwargs = _parse_json_kwargs(kwargs_json, kwargs_option)
    _cwd_on_path()
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path or ":" in attr_path:
        raise CliError(
            f"{option} {spec!r} is not an import path module:Class; write e.g. "
            f"{option} dpiat_jax.models:CifarResNet"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        hint = (
            "check the spelling, install the package, or run from the directory that "
            "holds it (the current directory is on the import path)"
        )
        if err.name and err.name != module_name and not module_name.startswith(err.name + "."):
            hint = f"module {module_name!r} itself imports {err.name!r}, which is missing"
        raise CliError(
            f"{option} {spec!r}: cannot import module {module_name!r} ({_first_line(err)}); {hint}"
        ) from None
    except Exception as err:  # noqa: BLE001 - any failure while importing user code
        raise CliError(
            f"{option} {spec!r}: importing module {module_name!r} failed ({_first_line(err)}); "
            "fix that module so that it imports"
        ) from None
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            available = _module_classes(module)
            lower = {name.lower(): name for name in available}
            close = difflib.get_close_matches(part.lower(), list(lower), n=1)
            fix = f"did you mean {module_name}:{lower[close[0]]}?" if close else ""
            if not fix:
                shown = ", ".join(available[:12]) + (" ..." if len(available) > 12 else "")
                fix = f"Module classes there: {shown}" if available else "check the name"
            raise CliError(f"{option} {spec!r}: {module_name!r} has no {part!r}; {fix}")
        obj = getattr(obj, part)
    try:
        if isinstance(obj, nn.Module):
            built = obj.clone(**kwargs) if kwargs else obj
        elif callable(obj):
            built = obj(**kwargs)
        else:
            raise CliError(
                f"{option} {spec!r} is a {type(obj).__name__}, not a class or a function "
                "returning a flax.linen.Module; name the model's class"
            )
    except CliError:
        raise
    except Exception as err:  # noqa: BLE001 - the constructor's own error, shown in one line
        raise CliError(
            f"{kwargs_option} {json.dumps(kwargs, default=str)} do not fit {spec} "
            f"({_first_line(err)}); pass only its constructor arguments"
        ) from None
    if not isinstance(built, nn.Module):
        raise CliError(
            f"{option} {spec!r} returned a {type(built).__name__}, not a flax.linen.Module; "
            "name a linen Module class (or a function returning one)"
        )
    return built


def _describe(spec: str, kwargs_json: str | None) -> str:
    kwargs = (kwargs_json or "").strip()
    return f"{spec} {kwargs}" if kwargs and kwargs != "{}" else spec


_TRAIN_STATE_FIELDS = ("step", "opt_state", "dropout_key")


def load_checkpoint_variables(path: str, option: str = "--src") -> dict[str, Any]:
    """Restore an Orbax checkpoint without a target and return its model variables.

    Args:
        path: the checkpoint directory.
        option: the option ``path`` came from, for messages.

    Returns:
        From a :class:`~dpiat_jax.experiments.train.TrainState` checkpoint
        ``{"params", "batch_stats"}`` (the latter when saved); a variables dict as is; a
        bare params collection as ``{"params": ...}``.

    Raises:
        CliError: when ``path`` is missing, a file, unreadable or holds no variables.
    """
    if not os.path.exists(path):
        raise CliError(
            f"{option} {path}: no such checkpoint directory; pass the directory that "
            "dpiat_jax.experiments.train.save_checkpoint wrote"
        )
    if not os.path.isdir(path):
        raise CliError(
            f"{option} {path} is a file; an Orbax checkpoint is a directory (the path "
            "given to dpiat_jax.experiments.train.save_checkpoint)"
        )
    from dpiat_jax.experiments import train

    try:
        tree = train.restore_checkpoint(path)
    except Exception as err:  # noqa: BLE001 - Orbax raises many types for unreadable dirs
        raise CliError(
            f"{option} {path} is not a readable Orbax checkpoint ({_first_line(err)}); pass "
            "a directory written by dpiat_jax.experiments.train.save_checkpoint"
        ) from None
    if not isinstance(tree, Mapping) or not tree:
        raise CliError(
            f"{option} {path} holds a {type(tree).__name__}, not model variables; save a "
            "variables dict or a TrainState with dpiat_jax.experiments.train.save_checkpoint"
        )
    tree = dict(tree)
    if "params" in tree and isinstance(tree["params"], Mapping):
        if any(k in tree for k in _TRAIN_STATE_FIELDS):  # a TrainState
            out = {"params": tree["params"]}
            if isinstance(tree.get("batch_stats"), Mapping) and tree["batch_stats"]:
                out["batch_stats"] = tree["batch_stats"]
            return out
        return {k: v for k, v in tree.items() if isinstance(v, Mapping)}
    return {"params": tree}


def _shape_text(shape: tuple[int, ...]) -> str:
    return ",".join(str(d) for d in shape)


def _parse_shape(text: str | None, dtype: str = "float32") -> Any:
    """``--input-shape``/``--input-dtype`` as a ``jax.ShapeDtypeStruct``, or None."""
    if text is None:
        return None
    import jax
    import jax.numpy as jnp
    import numpy as np

    try:
        np_dtype = np.dtype(getattr(jnp, dtype, dtype))
    except TypeError:
        raise CliError(
            f"--input-dtype {dtype!r} is not a dtype; use e.g. float32, bfloat16 or int32"
        ) from None
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise CliError(
            f"--input-shape {text!r} is not a shape; give one example batch's shape with "
            "the batch axis first, e.g. --input-shape 1,32,32,3"
        )
    return jax.ShapeDtypeStruct(shape, np_dtype)


class _SourceAction(argparse.Action):
    """Records ``--src``/``--src-def``/``--src-kwargs`` in command-line order, so that the
    definition options can be attached to the ``--src`` before them."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, self.dest, None) or [])
        items.append((self.const, values))
        setattr(namespace, self.dest, items)


def _sources(args: argparse.Namespace) -> list[Source]:
    """Groups the source options: each ``--src`` with the definition options after it."""
    groups: list[Source] = []
    for kind, value in args.source_args or []:
        if kind == "src":
            groups.append(Source(ckpt=value))
            continue
        option = "--src-def" if kind == "definition" else "--src-kwargs"
        if not groups:
            raise CliError(
                f"{option} {value!r} comes before any --src; write --src CKPT "
                "--src-def module:Class [--src-kwargs JSON] for each source"
            )
        current = groups[-1]
        if getattr(current, kind) is not None:
            raise CliError(
                f"--src {current.ckpt} has two {option} options; give each --src one "
                f"{option} (a new source starts with its own --src)"
            )
        setattr(current, kind, value)
    if not groups:
        raise CliError("--src is required: --src CKPT --src-def module:Class")
    for g in groups:
        if g.definition is None:
            raise CliError(
                f"--src {g.ckpt} has no --src-def; add --src-def module:Class (its "
                "architecture, e.g. dpiat_jax.models:CifarResNet) after it"
            )
    return groups


# ---------------------------------------------------------------------------
# Loading models, checkpoints and inputs.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Loaded:
    source: Source
    module: Any
    variables: dict[str, Any]
    sample_input: Any


def _fit_problems(err: ValueError, shown: int = 3) -> str:
    """The library's does-not-fit message as one short line: its first mismatching paths
    and how many more, without its Python-level advice (``Pass ...``)."""
    lines = str(err).splitlines()
    paths = [
        ln.strip() for ln in lines[1:] if ln.startswith("  ") and not ln.strip().startswith("...")
    ]
    paths.sort(key=lambda p: "kernel" not in p.split(":")[0])  # kernels tell most
    more = re.search(r"and (\d+) more", str(err))
    total = len(paths) + (int(more.group(1)) if more else 0)
    if paths:
        text = "; ".join(paths[:shown])
        return text + (f"; ... and {total - shown} more" if total > shown else "")
    text = _one_line(str(err)).split(" Pass ")[0].rstrip(". ")
    return text.replace("`--src` has", "it has")


def _resolve_input(module: Any, variables: dict[str, Any], shape: Any, src: Source) -> Any:
    """The example batch the source is traced with: ``--input-shape``, or the first
    candidate (inferred from the kernels' shapes) whose init reproduces the checkpoint.
    Raises :class:`CliError` naming the mismatching paths when none fits."""
    import jax.numpy as jnp

    from dpiat_jax.trace import inputs

    kwargs = inputs.call_kwargs_for(module, None)
    if shape is not None:
        candidates = [shape]
    else:
        candidates = list(inputs.candidate_inputs(variables))
    closest, call_error = None, None
    for cand in candidates:
        try:
            abstract = inputs.abstract_init(module, inputs.CallSpec(cand, kwargs))
        except Exception as err:  # noqa: BLE001 - a candidate that does not run is skipped
            call_error = call_error or (cand, err)
            continue
        if inputs.fits(abstract, variables):
            return jnp.zeros(cand.shape, cand.dtype)
        closest = closest or (cand, abstract)
    definition = _describe(src.definition, src.kwargs)
    if closest is not None:
        cand, abstract = closest
        problems = "its structure differs"
        # The params first: their paths (kernels) tell most; then all collections.
        for part in ({"params": variables.get("params", {})}, variables):
            try:
                inputs.check_variables_fit(module, part, abstract, "--src")
            except ValueError as err:
                problems = _fit_problems(err)
                break
        if shape is None:
            where, hint = "", " (or --input-shape if the definition is right)"
        else:
            where, hint = f" with --input-shape {_shape_text(shape.shape)}", ""
        raise CliError(
            f"--src {src.ckpt} does not fit --src-def {definition}{where}: {problems}. Pass "
            f"the --src-def/--src-kwargs the checkpoint was trained with{hint}"
        )
    if call_error is not None:
        cand, err = call_error
        raise CliError(
            f"--src-def {definition} cannot be called with an input of shape "
            f"{tuple(cand.shape)} ({_first_line(err)}); pass --input-shape with the batch "
            "shape it was trained on, e.g. --input-shape 1,32,32,3"
        )
    raise CliError(
        f"--src {src.ckpt}: no input shape could be inferred from its kernels; pass "
        "--input-shape with the batch shape it was trained on, e.g. --input-shape 1,32,32,3"
    )


def _load_source(src: Source, module: Any, shape: Any, progress: _Progress) -> _Loaded:
    progress(f"restoring {src.ckpt}")
    variables = load_checkpoint_variables(src.ckpt, "--src")
    x = _resolve_input(module, variables, shape, src)
    return _Loaded(src, module, variables, x)


def _source_definition(src: Source) -> Any:
    return load_definition(src.definition, src.kwargs, "--src-def", "--src-kwargs")


def _load_target(args: argparse.Namespace) -> Any:
    return load_definition(args.dst_def, args.dst_kwargs, "--dst-def", "--dst-kwargs")


def _runs(module: Any, x: Any) -> bool:
    from dpiat_jax.trace import inputs

    try:
        inputs.abstract_init(module, inputs.CallSpec(x, inputs.call_kwargs_for(module, None)))
    except Exception:  # noqa: BLE001 - any failure means "not this input"
        return False
    return True


def _check_target(dst: Any, x: Any, args: argparse.Namespace) -> None:
    """Fails early, in command-line terms, when the target cannot run on the input."""
    from dpiat_jax.trace import inputs

    kwargs = inputs.call_kwargs_for(dst, None)
    try:
        inputs.abstract_init(dst, inputs.CallSpec(x, kwargs))
    except Exception as err:  # noqa: BLE001 - the module's own error, shown in one line
        raise CliError(
            f"--dst-def {_describe(args.dst_def, args.dst_kwargs)} cannot be called with an "
            f"input of shape {tuple(x.shape)} ({_first_line(err)}); check --dst-kwargs, or "
            "pass --input-shape with a batch shape both models accept"
        ) from None


# ---------------------------------------------------------------------------
# The subcommands.
# ---------------------------------------------------------------------------


def _common_args(parser: argparse.ArgumentParser, *, several: bool) -> None:
    src_help = "a source checkpoint (Orbax directory: variables dict or TrainState)"
    if several:
        src_help += "; repeat --src CKPT --src-def ... for every candidate"
    parser.add_argument(
        "--src",
        dest="source_args",
        action=_SourceAction,
        const="src",
        metavar="CKPT",
        help=src_help,
    )
    parser.add_argument(
        "--src-def",
        dest="source_args",
        action=_SourceAction,
        const="definition",
        metavar="MODULE:CLASS",
        help="the source's architecture: an import path, e.g. dpiat_jax.models:CifarResNet",
    )
    parser.add_argument(
        "--src-kwargs",
        dest="source_args",
        action=_SourceAction,
        const="kwargs",
        metavar="JSON",
        help="""the source class's constructor arguments, e.g. '{"depth": 20}'""",
    )
    parser.add_argument(
        "--dst-def",
        required=True,
        metavar="MODULE:CLASS",
        help="the target's architecture (import path)",
    )
    parser.add_argument(
        "--dst-kwargs",
        default=None,
        metavar="JSON",
        help="the target class's constructor arguments (JSON object)",
    )
    parser.add_argument(
        "--input-shape",
        default=None,
        metavar="SHAPE",
        help="one example batch's shape, batch axis first, e.g. 1,32,32,3 (default: "
        "inferred from the source checkpoint's kernels)",
    )
    parser.add_argument(
        "--input-dtype",
        default="float32",
        metavar="DTYPE",
        help="dtype of the --input-shape batch, e.g. int32 for token ids (default: float32)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _transfer_args(parser: argparse.ArgumentParser) -> None:
    _common_args(parser, several=False)
    parser.add_argument(
        "--out", required=True, metavar="CKPT", help="where to write the target's variables"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the target's fresh init (default: 0)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists already"
    )
    parser.add_argument(
        "--report", action="store_true", help="also print the matching report to stdout"
    )


def _match_args(parser: argparse.ArgumentParser) -> None:
    _common_args(parser, several=False)
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the target's fresh init (default: 0)"
    )
    parser.add_argument(
        "--plot", default=None, metavar="FILE", help="also draw the alignment (e.g. match.png)"
    )


def _rank_args(parser: argparse.ArgumentParser) -> None:
    _common_args(parser, several=True)
    parser.add_argument(
        "--json", action="store_true", help="print the ranking as JSON instead of a table"
    )


def _single_source(args: argparse.Namespace, command: str) -> Source:
    sources = _sources(args)
    if len(sources) > 1:
        raise CliError(
            f"{command} takes one --src, got {len(sources)}; use `dpiat-jax rank` to compare "
            "several sources"
        )
    return sources[0]


def _prepare_pair(args: argparse.Namespace, command: str, progress: _Progress):
    src = _single_source(args, command)
    shape = _parse_shape(args.input_shape, args.input_dtype)
    module = _source_definition(src)
    dst = _load_target(args)
    loaded = _load_source(src, module, shape, progress)
    _check_target(dst, loaded.sample_input, args)
    return loaded, dst


def _transfer_body(args: argparse.Namespace) -> int:
    progress = _Progress("transfer", args.quiet)
    out = os.path.abspath(args.out)
    src = _single_source(args, "transfer")
    if os.path.abspath(src.ckpt) == out:
        raise CliError(f"--out {args.out} is the source checkpoint; choose another path")
    if os.path.exists(out) and not args.overwrite:
        raise CliError(
            f"--out {args.out} exists already; pass --overwrite to replace it or choose a new path"
        )
    if os.path.exists(out) and not os.path.isdir(out):
        raise CliError(f"--out {args.out} is a file; give a directory path for the checkpoint")
    loaded, dst = _prepare_pair(args, "transfer", progress)

    import jax

    import dpiat_jax as dj
    from dpiat_jax.experiments import train

    rng = jax.random.key(args.seed)
    progress(f"transferring {src.definition} -> {args.dst_def}")
    try:  # transfer(...) is plan(...).apply(...): one pipeline, its report printed below
        the_plan = dj.plan(
            loaded.module,
            dst,
            src_variables=loaded.variables,
            sample_input=loaded.sample_input,
            rng=rng,
        )
        variables = the_plan.apply(loaded.variables, rng)
    except (ValueError, TypeError) as err:
        raise _library_error(err, "transfer failed") from None
    progress(f"writing {args.out}")
    train.save_checkpoint(out, variables)
    sizes = [int(getattr(a, "size", 0)) for a in jax.tree.leaves(variables)]
    progress(f"wrote {args.out} ({len(sizes)} arrays, {sum(sizes):,} values)")
    if args.report:
        print(the_plan)
    return 0


def _match_body(args: argparse.Namespace) -> int:
    progress = _Progress("match", args.quiet)
    if args.plot:
        parent = os.path.dirname(os.path.abspath(args.plot))
        if not os.path.isdir(parent):
            raise CliError(f"--plot {args.plot}: folder {parent} does not exist; create it first")
    loaded, dst = _prepare_pair(args, "match", progress)

    import jax

    import dpiat_jax as dj

    progress(f"matching {loaded.source.definition} -> {args.dst_def}")
    try:
        report = dj.match(
            loaded.variables,
            loaded.module,
            dst,
            jax.random.key(args.seed),
            sample_input=loaded.sample_input,
        )
    except (ValueError, TypeError) as err:
        raise _library_error(err, "match failed") from None
    print(report)
    if args.plot:
        progress(f"drawing {args.plot}")
        try:
            report.plot(args.plot)
        except ValueError as err:  # e.g. a suffix Matplotlib cannot write
            raise CliError(
                f"--plot {args.plot}: {_first_line(err)}; use a .png, .pdf or .svg file name"
            ) from None
        progress(f"wrote {args.plot}")
    return 0


def _rank_body(args: argparse.Namespace) -> int:
    progress = _Progress("rank", args.quiet)
    sources = _sources(args)
    shape = _parse_shape(args.input_shape, args.input_dtype)
    modules = [_source_definition(s) for s in sources]
    dst = _load_target(args)
    loaded = [_load_source(s, m, shape, progress) for s, m in zip(sources, modules)]
    # The target runs on the first source input it accepts (sources may be flat MLPs).
    x0 = next((i.sample_input for i in loaded if _runs(dst, i.sample_input)), None)
    _check_target(dst, loaded[0].sample_input if x0 is None else x0, args)

    import dpiat_jax as dj

    shapes = {tuple(item.sample_input.shape) for item in loaded}
    sample_input = x0 if len(shapes) == 1 else (None, x0)
    progress(f"ranking {len(loaded)} source(s) for {args.dst_def}")
    try:
        ranking = dj.rank_sources(
            [(item.module, item.variables) for item in loaded], dst, sample_input=sample_input
        )
    except (ValueError, TypeError) as err:
        raise _library_error(err, "rank failed") from None
    rows = [
        {
            "rank": r,
            "similarity": sim,
            "src": loaded[i].source.ckpt,
            "src_def": _describe(loaded[i].source.definition, loaded[i].source.kwargs),
        }
        for r, (i, sim) in enumerate(ranking, start=1)
    ]
    if args.json:
        print(json.dumps({"dst_def": _describe(args.dst_def, args.dst_kwargs), "ranking": rows}))
        return 0
    print(f"sources ranked by DPIAT similarity to {_describe(args.dst_def, args.dst_kwargs)}:")
    width = max(len("checkpoint"), *(len(row["src"]) for row in rows))
    print(f"{'rank':>4}  {'similarity':>10}  {'checkpoint':<{width}}  definition")
    for row in rows:
        print(
            f"{row['rank']:>4}  {row['similarity']:>10.4f}  {row['src']:<{width}}  {row['src_def']}"
        )
    return 0


@subcommand(
    "transfer",
    extra="cli",
    help="initialise a target architecture from a source checkpoint; write a checkpoint",
    add_arguments=_transfer_args,
    description=(
        "Restores the source checkpoint (a variables dict or a TrainState), builds the "
        "source and target from their import paths, transfers with DPIAT and writes the "
        "target's variables ({'params', 'batch_stats'}, exactly the structure of its fresh "
        "init) as an Orbax checkpoint to --out."
    ),
)
def _transfer(args: argparse.Namespace) -> int:
    return _run_guarded("transfer", lambda: _transfer_body(args))


@subcommand(
    "match",
    extra="cli",
    help="print what a transfer from a source checkpoint would move (and plot it)",
    add_arguments=_match_args,
    description=(
        "Prints the DPIAT matching report of a source checkpoint and a target "
        "architecture: every (source layer -> target layer, score) pair, the target's "
        "coverage and the layers left unmatched; --plot FILE draws the alignment."
    ),
)
def _match(args: argparse.Namespace) -> int:
    return _run_guarded("match", lambda: _match_body(args))


@subcommand(
    "rank",
    extra="cli",
    help="rank several source checkpoints by their DPIAT similarity to one target",
    add_arguments=_rank_args,
    description=(
        "Computes the DPIAT similarity (score(source, target) / score(target, target)) of "
        "every --src checkpoint to the --dst-def architecture, without training, and prints "
        "them best first: the source to transfer from comes first."
    ),
)
def _rank(args: argparse.Namespace) -> int:
    return _run_guarded("rank", lambda: _rank_body(args))
