"""The public entry points: ``transfer``, ``match``, ``similarity``, ``rank_sources``.

Each composes the pipeline stages of design.md (layers -> blocks -> scores ->
alignment -> matching -> tensors -> variables); each stage is a public function of its
own module too.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax

from dpiat_jax.blocks import blocks, to_spec_tree, tree_leaves
from dpiat_jax.channels import target_channels
from dpiat_jax.layers import Layer, ModuleNode, build_hierarchy, layers
from dpiat_jax.matchers import Matcher, align, matcher_name
from dpiat_jax.matching import MatchReport, build_report, layer_pairs
from dpiat_jax.similarity import (
    alignment_similarity,
    rank_trees,
    similarity_matcher,
    tree_similarity,
)
from dpiat_jax.spec import LayerSpec, validate_tree
from dpiat_jax.tensors import TensorRule, get_tensor_rule, tensor_rule_name
from dpiat_jax.trace import inputs
from dpiat_jax.trace import nnx as nnx_models
from dpiat_jax.trace.inputs import CallSpec
from dpiat_jax.trace.linen import record_calls, trace
from dpiat_jax.variables import nonfinite_tensors, write_tensors

__all__ = [
    "transfer",
    "match",
    "similarity",
    "rank_sources",
    "module_layers",
    "module_blocks",
]


def _is_input(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _as_variables(tree: Any, argname: str) -> tuple[dict, bool, bool]:
    """Returns ``(variables, was_variables_dict, was_frozen)`` for what the user passed."""
    if not isinstance(tree, Mapping):
        raise TypeError(
            f"`{argname}` must be a Flax variables dict ({{'params': ...}}) or a params "
            f"collection (a nested dict of arrays), got {type(tree).__name__}."
        )
    frozen = isinstance(tree, flax.core.FrozenDict)
    plain = flax.core.unfreeze(tree) if frozen else dict(tree)
    if "params" in plain and isinstance(plain["params"], Mapping):
        return plain, True, frozen
    return {"params": plain}, False, frozen


@dataclasses.dataclass(frozen=True)
class _Prepared:
    src_root: ModuleNode
    dst_root: ModuleNode
    dst_variables: dict
    dst_call: CallSpec | None = None  # None for an NNX target


def _trace_source(module, variables, sample_input, kwargs, argname) -> tuple[ModuleNode, Any]:
    """Traces a module whose variables are known; returns ``(hierarchy, input used)``.

    Without ``sample_input`` the candidate inputs are traced in turn until one
    reproduces the variables' shapes (each trace both checks and records the layers).
    """
    kwargs = inputs.call_kwargs_for(module, kwargs)

    def probe(x):
        root, abstract = trace(module, variables, (x,), kwargs)
        return abstract, root

    if sample_input is None:
        x, root = inputs.find_fitting_input(probe, variables, argname, type(module).__name__)
        return root, x
    call = CallSpec(sample_input, kwargs)
    try:
        abstract, root = probe(sample_input)
    except Exception as err:  # noqa: BLE001 - re-raised with the arguments named
        raise inputs.init_error(module, call, argname, err) from err
    inputs.check_variables_fit(module, variables, abstract, argname)
    return root, sample_input


def _init_target(module, call: CallSpec, rng) -> tuple[ModuleNode, dict]:
    rngs = {"params": rng, "dropout": jax.random.fold_in(rng, 1)}
    try:
        fresh, calls = record_calls(module.init, rngs, call.sample_input, **call.kwargs)
    except Exception as err:  # noqa: BLE001 - re-raised with the arguments named
        raise inputs.init_error(module, call, "dst_def", err) from err
    fresh = flax.core.unfreeze(fresh)
    return build_hierarchy(calls, fresh), fresh


def _trace_nnx(model, sample_input, kwargs, argname) -> tuple[ModuleNode, dict, Any]:
    """Traces an NNX model; returns ``(hierarchy, variables, input used)``. Without an
    input, candidates from its variables' shapes are tried until one runs."""
    variables = nnx_models.nnx_variables(model)
    if sample_input is None:

        def probe(x):  # an NNX model's variables do not depend on the input: any that runs
            return variables, nnx_models.trace_nnx(model, x, kwargs)

        x, (root, _) = inputs.find_fitting_input(probe, variables, argname, type(model).__name__)
        return root, variables, x
    try:
        root, _ = nnx_models.trace_nnx(model, sample_input, kwargs)
    except Exception as err:  # noqa: BLE001 - re-raised with the arguments named
        raise inputs.init_error(model, CallSpec(sample_input, kwargs), argname, err) from err
    return root, variables, sample_input


def _source(src_params, src_def, sample_input, kwargs):
    """The source's hierarchy, variables, input used, and the form of ``src_params``."""
    if nnx_models.is_nnx(src_params):
        if src_def is not None and src_def is not src_params:
            raise TypeError(
                "`src_params` is an NNX model, which carries its own definition: pass "
                "src_def=None (or the same model)."
            )
        root, variables, x = _trace_nnx(src_params, sample_input, kwargs, "src_params")
        return root, x, True, False
    inputs.check_module(src_def, "src_def")
    variables, is_vars, frozen = _as_variables(src_params, "src_params")
    root, x = _trace_source(src_def, variables, sample_input, kwargs, "src_params")
    return root, x, is_vars, frozen


def _prepare(src_params, src_def, dst_def, rng, sample_input, call_kwargs):
    if not nnx_models.is_nnx(dst_def):
        inputs.check_module(dst_def, "dst_def")
    src_in, dst_in = inputs.split_pair(sample_input, "sample_input", is_single=_is_input)
    src_kw, dst_kw = inputs.split_pair(
        call_kwargs, "call_kwargs", is_single=lambda x: isinstance(x, Mapping)
    )
    src_root, src_x, is_vars, frozen = _source(src_params, src_def, src_in, src_kw)
    dst_x = src_x if dst_in is None else dst_in
    if isinstance(dst_x, jax.ShapeDtypeStruct):
        dst_x = jax.numpy.zeros(dst_x.shape, dst_x.dtype)
    if nnx_models.is_nnx(dst_def):
        dst_root, fresh, _ = _trace_nnx(dst_def, dst_x, dict(dst_kw or {}), "dst_def")
        return _Prepared(src_root, dst_root, fresh), is_vars, frozen
    dst_call = CallSpec(dst_x, inputs.call_kwargs_for(dst_def, dst_kw))
    rng = jax.random.key(0) if rng is None else rng
    dst_root, fresh = _init_target(dst_def, dst_call, rng)
    return _Prepared(src_root, dst_root, fresh, dst_call), is_vars, frozen


def _nonempty(tree: list, argname: str) -> None:
    if not any(not x.is_placeholder for x in tree_leaves(tree)):
        raise ValueError(
            f"`{argname}` has no layers with parameters: there is nothing to align. "
            "Check that the module creates parameters when called with this input."
        )


@dataclasses.dataclass(frozen=True)
class _Options:
    """The keyword options of :func:`transfer` and :func:`match`, validated."""

    matcher: Any = "dp"
    tensor_rule: Any = "clip"
    on_nonfinite: str = "warn"
    out_shardings: Any = None

    def __post_init__(self) -> None:
        get_tensor_rule(self.tensor_rule)  # unknown names fail before any tracing
        matcher_name(self.matcher)
        if self.on_nonfinite not in _NONFINITE:
            raise ValueError(
                f"Unknown on_nonfinite {self.on_nonfinite!r}; use one of {list(_NONFINITE)}."
            )


_NONFINITE = ("warn", "raise", "ignore")


def _check_finite(pairs, policy: str) -> None:
    """Warns or raises (per ``on_nonfinite``) when matched source tensors hold NaN/inf."""
    if policy == "ignore":
        return
    bad = nonfinite_tensors(pairs)
    if not bad:
        return
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    message = (
        f"`src_params` has non-finite values (NaN or inf) in {shown}, which the transfer "
        "copies into the target. Fix the source (or pass on_nonfinite='ignore' to copy "
        "them anyway, or on_nonfinite='raise' to stop)."
    )
    if policy == "raise":
        raise FloatingPointError(message)
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def _place(out: Any, out_shardings: Any) -> Any:
    """Puts the result on ``out_shardings`` (one sharding, or a pytree of them)."""
    if out_shardings is None:
        return out
    try:
        return jax.device_put(out, out_shardings)
    except (ValueError, TypeError) as err:
        raise ValueError(
            "`out_shardings` must be one jax.sharding.Sharding for every array or a pytree "
            f"of shardings with the result's structure ({jax.tree.structure(out)}): {err}"
        ) from err


def _run(src_params, src_def, dst_def, rng, sample_input, call_kwargs, options: _Options):
    prepared, is_vars, frozen = _prepare(
        src_params, src_def, dst_def, rng, sample_input, call_kwargs
    )
    src_blocks, dst_blocks = blocks(prepared.src_root), blocks(prepared.dst_root)
    _nonempty(src_blocks, "src_def")
    _nonempty(dst_blocks, "dst_def")
    src_spec, dst_spec = to_spec_tree(src_blocks), to_spec_tree(dst_blocks)
    rng = jax.random.key(0) if rng is None else rng
    matcher_label = matcher_name(options.matcher)
    result = align(src_spec, dst_spec, options.matcher, rng=jax.random.fold_in(rng, 3))
    sim = alignment_similarity(result, dst_spec, matcher_label)
    pairs = layer_pairs(result, src_blocks, dst_blocks)
    _check_finite(pairs, options.on_nonfinite)
    rule = get_tensor_rule(options.tensor_rule)
    channels = None  # which target dimensions share channels, for rules that select them
    if prepared.dst_call is not None:
        call = prepared.dst_call
        channels = target_channels(
            rule, dst_def, prepared.dst_variables, call.sample_input, call.kwargs
        )
    new_vars, written, skipped = write_tensors(
        pairs, prepared.dst_variables, rule, jax.random.fold_in(rng, 2), channels=channels
    )
    report = build_report(
        pairs,
        src_blocks,
        dst_blocks,
        written=written,
        skipped=skipped,
        score=result.score,
        similarity=sim,
        matcher=matcher_label,
        tensor_rule=tensor_rule_name(options.tensor_rule),
    )
    if nnx_models.is_nnx(dst_def):
        return nnx_models.with_variables(dst_def, _place(new_vars, options.out_shardings)), report
    out = new_vars if is_vars else new_vars["params"]
    out = _place(out, options.out_shardings)
    if frozen:
        out = flax.core.freeze(out)
    return out, report


def transfer(
    src_params: Mapping[str, Any],
    src_def: nn.Module,
    dst_def: nn.Module,
    rng: jax.Array,
    *,
    sample_input: Any = None,
    call_kwargs: Mapping[str, Any] | tuple | None = None,
    matcher: str | Matcher = "dp",
    tensor_rule: str | TensorRule = "clip",
    on_nonfinite: str = "warn",
    out_shardings: Any = None,
) -> Any:
    """Initialises ``dst_def`` from the trained variables of a different architecture.

    Args:
      src_params: the trained source: a variables dict (``{"params": ..., "batch_stats":
        ...}``) or only its params collection. Never modified.
      src_def: the source's linen module (the definition ``src_params`` belong to).
      dst_def: the target's linen module.
      rng: a PRNG key; the target's fresh init (``dst_def.init``) uses it, so every
        position the source does not supply keeps a proper random initialisation.
      sample_input: one example batch for both models, or a ``(src_input, dst_input)``
        pair. When None, an input that reproduces the source's variable shapes is
        inferred and also used for the target.
      call_kwargs: keyword arguments for both modules' ``__call__`` (e.g.
        ``{"train": False}``), or a ``(src_kwargs, dst_kwargs)`` pair. A required
        ``train``/``deterministic`` flag left out is set to inference mode.
      matcher: how layers are paired: a name in ``dpiat_jax.matchers.MATCHERS``
        (``"dp"``, the default, ``"flat"``, ``"bipartite"``, ``"nested-bipartite"``,
        ``"random"``) or a function ``(src_tree, dst_tree, rng=None) -> Alignment``.
      tensor_rule: how a matched tensor is moved: a name in
        ``dpiat_jax.tensors.TENSOR_RULES`` (``"clip"``, the default, ``"magnitude"``,
        ``"full"``, ``"uniform"``) or a function ``(src_array, dst_array, rng) -> array``
        of the target's shape and dtype.
      on_nonfinite: what to do when a source tensor that is copied holds NaN or inf:
        ``"warn"`` (default, a RuntimeWarning naming the tensors), ``"raise"``
        (FloatingPointError) or ``"ignore"``.
      out_shardings: where to place the result: one ``jax.sharding.Sharding`` for every
        array or a pytree of shardings with the result's structure. Sharded source
        arrays are sliced where they live, never gathered on one device first.

    Flax NNX models are accepted too: an NNX model stands where a definition and its
    variables are expected (``transfer(src_model, None, dst_model, rng)``; the target
    model holds its own fresh init), and the result is then a new NNX model of the
    target (the given models are not changed).

    Returns:
      The target's variables: the whole variables dict (every collection of the fresh
      init) when ``src_params`` has a top-level ``"params"`` key (or is an NNX model),
      otherwise only the params collection; a FrozenDict when ``src_params`` was one.
      Structure, shapes and dtypes are exactly those of ``dst_def.init``.
    """
    options = _Options(matcher, tensor_rule, on_nonfinite, out_shardings)
    out, _ = _run(src_params, src_def, dst_def, rng, sample_input, call_kwargs, options)
    return out


def match(
    src_params: Mapping[str, Any],
    src_def: nn.Module,
    dst_def: nn.Module,
    rng: jax.Array | None = None,
    *,
    sample_input: Any = None,
    call_kwargs: Mapping[str, Any] | tuple | None = None,
    matcher: str | Matcher = "dp",
    tensor_rule: str | TensorRule = "clip",
    on_nonfinite: str = "warn",
) -> MatchReport:
    """Returns the :class:`~dpiat_jax.matching.MatchReport` of what :func:`transfer` with
    the same arguments moves: every pair with its score, the target's coverage (layers
    and parameters) and the unmatched layers on both sides; ``str(report)`` is a table.
    The report records the matcher's and tensor rule's names; its similarity is NaN for
    a matcher without one (``flat``, ``nested-bipartite``, ``random``, user functions)."""
    options = _Options(matcher, tensor_rule, on_nonfinite)
    _, report = _run(src_params, src_def, dst_def, rng, sample_input, call_kwargs, options)
    return report


# ----------------------------------------------------------------------------------
# Spec trees from modules, similarity and ranking.


def _module_root(module, variables, sample_input, call_kwargs, argname) -> ModuleNode:
    """Traces a module (with its variables, or abstractly from ``sample_input``)."""
    inputs.check_module(module, argname)
    if variables is not None:
        plain, _, _ = _as_variables(variables, argname)
        return _trace_source(module, plain, sample_input, call_kwargs, argname)[0]
    if sample_input is None:
        raise ValueError(
            f"`{argname}` is a bare module: pass sample_input= so its layers can be "
            "discovered (or pass (module, variables))."
        )
    kwargs = inputs.call_kwargs_for(module, call_kwargs)
    try:
        return trace(module, None, (sample_input,), kwargs)[0]
    except Exception as err:  # noqa: BLE001 - re-raised with the arguments named
        raise inputs.init_error(module, CallSpec(sample_input, kwargs), argname, err) from err


def module_layers(
    module: nn.Module,
    variables: Mapping[str, Any] | None = None,
    *,
    sample_input: Any = None,
    call_kwargs: Mapping[str, Any] | None = None,
) -> list[Layer]:
    """Returns a module's layers and placeholders in call order (the layers stage).

    With ``variables`` the layers hold those arrays (and an input can be inferred);
    without, an abstract init supplies the shapes and ``sample_input`` is required.
    """
    return layers(_module_root(module, variables, sample_input, call_kwargs, "module"))


def module_blocks(
    module: nn.Module,
    variables: Mapping[str, Any] | None = None,
    *,
    sample_input: Any = None,
    call_kwargs: Mapping[str, Any] | None = None,
    argname: str = "module",
) -> list:
    """Returns a module's block tree (the blocks stage): nested lists of Layer records;
    :func:`dpiat_jax.blocks.to_spec_tree` turns it into the LayerSpec tree that the
    alignment sees. Arguments as for :func:`module_layers`."""
    return blocks(_module_root(module, variables, sample_input, call_kwargs, argname))


def _spec_of(obj: Any, argname: str, sample_input: Any, call_kwargs: Any) -> tuple[list, Any]:
    """A spec tree from a tree, a ``(module, variables)`` pair or a bare module; also
    returns the input that was used (so a bare target can reuse the source's)."""
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and isinstance(obj[0], nn.Module):
        module, variables = obj
        plain, _, _ = _as_variables(variables, argname)
        root, x = _trace_source(module, plain, sample_input, call_kwargs, argname)
        return to_spec_tree(blocks(root)), x
    if nnx_models.is_nnx(obj):
        root, _, x = _trace_nnx(obj, sample_input, dict(call_kwargs or {}), argname)
        return to_spec_tree(blocks(root)), x
    if isinstance(obj, (list, LayerSpec)):
        return validate_tree(obj, argname=argname), None
    if isinstance(obj, nn.Module):
        return (
            to_spec_tree(
                module_blocks(
                    obj, sample_input=sample_input, call_kwargs=call_kwargs, argname=argname
                )
            ),
            sample_input,
        )
    raise TypeError(
        f"`{argname}` must be a spec tree (nested list of LayerSpec), a (module, variables) "
        f"pair or a linen module, got {type(obj).__name__}."
    )


def similarity(
    src: Any,
    dst: Any,
    *,
    sample_input: Any = None,
    call_kwargs: Mapping[str, Any] | tuple | None = None,
    matcher: str | Matcher = "dp",
) -> float:
    """Returns ``score(src, dst) / score(dst, dst)``: how completely ``src`` can seed
    ``dst`` (1.0 for a full cover, toward 0 as architectures diverge; not symmetric).

    ``src`` and ``dst`` are spec trees or ``(module, variables)`` pairs; ``dst`` may also
    be a bare module, whose shapes come from an abstract init with the source's input.
    ``matcher="bipartite"`` gives the bipartite matcher's normalised score instead; no
    other matcher defines a similarity (``ValueError``).
    """
    matcher = similarity_matcher(matcher)  # rejects matchers without a similarity
    src_in, dst_in = inputs.split_pair(sample_input, "sample_input", is_single=_is_input)
    src_kw, dst_kw = inputs.split_pair(
        call_kwargs, "call_kwargs", is_single=lambda x: isinstance(x, Mapping)
    )
    src_tree, used = _spec_of(src, "src", src_in, src_kw)
    dst_tree, _ = _spec_of(dst, "dst", dst_in if dst_in is not None else used, dst_kw)
    return tree_similarity(src_tree, dst_tree, matcher)


def rank_sources(
    candidates: Sequence[Any],
    target: Any,
    *,
    sample_input: Any = None,
    call_kwargs: Mapping[str, Any] | tuple | None = None,
) -> list[tuple[int, float]]:
    """Ranks candidate sources by their similarity to ``target``, best first.

    ``candidates`` are spec trees or ``(module, variables)`` pairs; ``target`` a spec
    tree, a module or a ``(module, variables)`` pair. All similarities are computed in
    one batched call per nesting depth. Returns ``(candidate index, similarity)`` pairs;
    ties keep the candidates' order.
    """
    if not isinstance(candidates, Sequence) or isinstance(candidates, (str, bytes)):
        raise TypeError("`candidates` must be a list of spec trees or (module, variables).")
    src_in, dst_in = inputs.split_pair(sample_input, "sample_input", is_single=_is_input)
    src_kw, dst_kw = inputs.split_pair(
        call_kwargs, "call_kwargs", is_single=lambda x: isinstance(x, Mapping)
    )
    trees, used = [], None
    for i, c in enumerate(candidates):
        tree, u = _spec_of(c, f"candidates[{i}]", src_in, src_kw)
        trees.append(tree)
        used = used if used is not None else u
    dst_tree, _ = _spec_of(target, "target", dst_in if dst_in is not None else used, dst_kw)
    return rank_trees(trees, dst_tree)
