"""The public entry points: ``transfer``, ``match``, ``similarity``, ``rank_sources``.

Each only composes: arguments are normalised (:mod:`dpiat_jax.arguments`), options
validated (:mod:`dpiat_jax.options`), models traced through one adapter choice
(:mod:`dpiat_jax.trace.adapter`), the transfer planned and applied
(:mod:`dpiat_jax.plan`). Every stage is a public function of its own module too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn

from dpiat_jax.arguments import as_key, as_variables, split_inputs, split_kwargs
from dpiat_jax.blocks import blocks, to_spec_tree
from dpiat_jax.layers import Layer, ModuleNode, layers
from dpiat_jax.matchers import Matcher
from dpiat_jax.matching import MatchReport
from dpiat_jax.options import Options
from dpiat_jax.plan import TransferPlan, build_plan
from dpiat_jax.similarity import rank_trees, similarity_matcher, tree_similarity
from dpiat_jax.spec import LayerSpec, SpecTree, validate_tree
from dpiat_jax.tensors import TensorFn, TensorRule
from dpiat_jax.trace.adapter import (
    HfModel,
    Traced,
    adapt,
    held_definition,
    is_hf_model,
    model_variables,
    trace_target,
)
from dpiat_jax.trace.inputs import abstract_tree, one_input
from dpiat_jax.types import ArrayTree, PRNGKey, Variables

__all__ = [
    "transfer",
    "match",
    "similarity",
    "rank_sources",
    "module_layers",
    "module_blocks",
]


def _source_definition(src_params: Any, src_def: Any) -> Any:
    """The source's definition: ``src_def``, or the one ``src_params`` carries (an NNX
    model or a Hugging Face model standing for both, a TrainState's module)."""
    if src_def is None:
        held = held_definition(src_params)
        if held is None:
            raise TypeError(
                "`src_def` is None: pass the source's linen module (only an NNX model, a "
                "Hugging Face Flax model or a TrainState built with apply_fn=module.apply "
                "as `src_params` carries its own definition)."
            )
        return held
    if model_variables(src_params) is not None and not is_hf_model(src_params):
        if src_def is not src_params:
            raise TypeError(
                "`src_params` is an NNX model, which carries its own definition: pass "
                "src_def=None (or the same model)."
            )
    return src_def


def _source_variables(src_params: Any, src_def: Any) -> Any:
    """The source's variables: ``src_params``, or those ``src_def`` carries (an NNX or a
    Hugging Face model) when ``src_params`` is None."""
    if src_params is not None:
        return src_params
    own = None if src_def is None else model_variables(src_def)
    if own is None:
        raise TypeError(
            "`src_params` is None: pass the source's trained variables (a variables dict, "
            "its params, a TrainState), or a model that holds them (an NNX model or a "
            "Hugging Face Flax model) as `src_def`."
        )
    return src_def


def _whole_shardings(out_shardings: Any, the_plan: TransferPlan, keep: Any) -> Any:
    """The user's ``out_shardings`` (given for what ``transfer`` returns) for the whole
    variables dict that the plan's ``apply`` builds."""
    if out_shardings is None:
        return None
    params_only = {k[0] for k in the_plan.target} == {"params"}
    hf_params = isinstance(the_plan.model, HfModel) and params_only
    return {"params": out_shardings} if keep == ("params",) or hf_params else out_shardings


def _plan(src_params, src_def, dst_def, rng, sample_input, call_kwargs, options) -> TransferPlan:
    return build_plan(
        _source_definition(src_params, src_def),
        dst_def,
        _source_variables(src_params, src_def),
        sample_input,
        call_kwargs,
        options,
        rng,
        src_argname="src_params",
    )


def transfer(
    src_params: Variables,
    src_def: nn.Module,
    dst_def: nn.Module,
    rng: PRNGKey,
    *,
    sample_input: ArrayTree = None,
    call_kwargs: Mapping[str, Any] | tuple | None = None,
    matcher: str | Matcher = "dp",
    tensor_rule: str | TensorRule | TensorFn = "clip",
    on_nonfinite: str = "warn",
    fused: Mapping[str, int | tuple[int, int]] | None = None,
    deepen: str | None = None,
    out_shardings: Any = None,
) -> Any:
    """Initialises ``dst_def`` from the trained variables of a different architecture.

    ``transfer(...)`` is ``plan(...).apply(...)`` (:func:`dpiat_jax.plan`); it works
    inside a user's ``jax.jit`` too (planned from the tracers' shapes).

    Args:
      src_params: the trained source: a variables dict (``{"params": ..., "batch_stats":
        ...}``), only its params collection, a ``flax.training.train_state.TrainState``
        (or any object with ``.params`` and optionally ``.batch_stats``), a Hugging Face
        Flax model object or an NNX model; None when ``src_def`` holds them (an NNX or a
        Hugging Face model). Never modified, and the result shares no buffer with it.
      src_def: the source's linen module (the definition ``src_params`` belong to), or
        a Hugging Face Flax model object (its ``module``, and its ``params`` when
        ``src_params`` is None); None when ``src_params`` carries its definition (an
        NNX or a Hugging Face model, or a TrainState built with
        ``apply_fn=module.apply``).
      dst_def: the target's linen module, or a Hugging Face Flax model object (its
        ``module``; its config gives a default input).
      rng: a PRNG key (``jax.random.key(0)``, a legacy ``jax.random.PRNGKey(0)``) or
        an int seed; the target's fresh init (``dst_def.init``) uses it, so every
        position the source does not supply keeps a proper random initialisation.
      sample_input: one example batch for both models, ``dpiat_jax.Inputs(x, y)`` for
        a ``__call__`` with several positional inputs, or a ``(src_input, dst_input)``
        pair (a 2-tuple is always a pair; its entries may be tuples of positional
        inputs). When None, the smallest input that reproduces the source's variable
        shapes is inferred and also used for the target (an ``InputInferenceWarning``
        says when the target's shapes depend on that choice).
      call_kwargs: keyword arguments for both modules' ``__call__`` (e.g.
        ``{"train": False}``), or a ``(src_kwargs, dst_kwargs)`` pair. A required
        ``train``/``deterministic`` flag left out is set to inference mode.
      matcher: how layers are paired: a name in ``dpiat_jax.matchers.MATCHERS``
        (``"dp"``, the default, ``"flat"``, ``"bipartite"``, ``"nested-bipartite"``,
        ``"random"``) or a function ``(src_tree, dst_tree, rng=None) -> Alignment``.
      tensor_rule: how a matched tensor is moved: a name in
        ``dpiat_jax.tensors.TENSOR_RULES`` (``"clip"``, the default, ``"magnitude"``,
        ``"full"``, ``"uniform"``) or a function ``(src_array, dst_array, rng) -> array``
        of the target's shape and dtype (jnp operations: it runs inside ``jax.jit``).
      on_nonfinite: what to do when a source tensor that is copied holds NaN or inf:
        ``"warn"`` (default, a RuntimeWarning naming the tensors), ``"raise"``
        (FloatingPointError) or ``"ignore"``.
      fused: fused projections the target's forward pass does not reveal: layer-name
        pattern (``fnmatch``) -> part count, or ``(count, axis)``
        (:mod:`dpiat_jax.fused`); splits of a projection's output in the forward pass
        (``jnp.split``, equal slices) are found without it.
      deepen: None, or ``"identity"``: where one source block seeds a run of target
        blocks, the later blocks of the run start as identities (their residual branch
        zero-initialised, :mod:`dpiat_jax.deepening`), so a deeper target computes the
        source's function at step 0.
      out_shardings: where to place the result: one ``jax.sharding.Sharding`` for every
        array or a pytree of shardings with the result's structure. The result is
        created there; sharded source arrays are read where they live.

    Flax NNX models are accepted too: an NNX model stands where a definition and its
    variables are expected (``transfer(src_model, None, dst_model, rng)``; the target
    model holds its own fresh init), and the result is then a new NNX model of the
    target (the given models are not changed).

    Hugging Face Flax models (``transformers.FlaxPreTrainedModel``) stand where a
    definition is expected (``transfer(None, src_model, dst_model, rng)``): the
    definition is ``model.module``, the source's variables its ``params``, and without
    ``sample_input`` each model is traced with an input built from its config (token ids
    of length ``min(max_position_embeddings, 16)`` with the attention mask, token types
    and position ids ``__call__`` takes positionally, or pixel values of its image size)
    in inference mode (``deterministic=True``).

    Returns:
      The target's variables: the whole variables dict (every collection of the fresh
      init) when ``src_params`` has a top-level ``"params"`` key (or is an NNX model, a
      Hugging Face model or a TrainState), otherwise only the params collection; a
      FrozenDict when ``src_params`` was one. Structure, shapes and dtypes are exactly
      those of ``dst_def.init``. A TrainState source gives a plain variables dict (a
      TrainState needs an optimizer, which the transfer does not own:
      ``state.replace(params=out["params"])``). A Hugging Face target gives its params
      in the form the model keeps them (the params collection, or ``{"params": ...,
      "batch_stats": ...}`` for models with batch statistics), so that
      ``dst_model.params = out`` works.

    Raises:
      TypeError: a definition that is not a Flax module, an ``rng`` that is neither a
        key nor an int, a ``call_kwargs`` keyword ``__call__`` does not take, the wrong
        number of positional inputs, or other malformed arguments.
      ValueError: unknown options, variables that do not fit ``src_def`` (another
        model's), an input that does not run or cannot be inferred, or a model without
        layers.
      FloatingPointError: a non-finite source tensor under ``on_nonfinite="raise"``.

    Warns:
      IgnoredCollectionWarning: the source holds sown values (``intermediates``), which
        are not transferable and are ignored.
      InputInferenceWarning: the input was inferred and the target's shapes depend on it.
      LowCoverageWarning: the transfer moves (almost) nothing, with the likely cause.

    >>> import flax.linen as nn
    >>> import jax, jax.numpy as jnp
    >>> x = jnp.zeros((1, 3))
    >>> src_vars = nn.Dense(2).init(jax.random.key(0), x)
    >>> out = transfer(src_vars, nn.Dense(2), nn.Dense(4), jax.random.key(1))
    >>> out["params"]["kernel"].shape
    (3, 4)
    """
    options = Options(matcher, tensor_rule, on_nonfinite, fused, deepen)
    rng = as_key(rng)
    the_plan = _plan(src_params, src_def, dst_def, rng, sample_input, call_kwargs, options)
    variables, form = as_variables(_source_variables(src_params, src_def), "src_params")
    keep = None if form.whole or isinstance(the_plan.model, HfModel) else ("params",)
    shardings = _whole_shardings(out_shardings, the_plan, keep)
    out = the_plan.apply(variables, rng, collections=keep, out_shardings=shardings)
    return the_plan.model.result(out, form)


def match(
    src_params: Variables,
    src_def: nn.Module,
    dst_def: nn.Module,
    rng: PRNGKey | None = None,
    *,
    sample_input: ArrayTree = None,
    call_kwargs: Mapping[str, Any] | tuple | None = None,
    matcher: str | Matcher = "dp",
    tensor_rule: str | TensorRule | TensorFn = "clip",
    on_nonfinite: str = "warn",
    fused: Mapping[str, int | tuple[int, int]] | None = None,
    deepen: str | None = None,
) -> MatchReport:
    """Returns what :func:`transfer` with the same arguments moves, without moving it.

    The report of the transfer's plan (:attr:`dpiat_jax.plan.TransferPlan.report`),
    computed from shapes only.

    Args:
      src_params, src_def, dst_def, rng, sample_input, call_kwargs, matcher,
      tensor_rule, on_nonfinite, fused, deepen: as for :func:`transfer` (``rng`` is only used
        by the random matcher).

    Returns:
      The :class:`~dpiat_jax.matching.MatchReport`: every pair with its score, the
      target's coverage (layers and parameters) and the unmatched layers on both sides;
      ``str(report)`` is a table. Its similarity is NaN for a matcher without one
      (``flat``, ``nested-bipartite``, ``random``, user functions).

    >>> import flax.linen as nn
    >>> import jax, jax.numpy as jnp
    >>> src_vars = nn.Dense(2).init(jax.random.key(0), jnp.zeros((1, 3)))
    >>> match(src_vars, nn.Dense(2), nn.Dense(4)).pairs
    (('<root>', '<root>', 0.5),)
    """
    options = Options(matcher, tensor_rule, on_nonfinite, fused, deepen)
    rng = as_key(rng)
    return _plan(src_params, src_def, dst_def, rng, sample_input, call_kwargs, options).report


# ----------------------------------------------------------------------------------
# Spec trees from modules, similarity and ranking.


def _module_root(module, variables, sample_input, call_kwargs, argname) -> ModuleNode:
    """Traces a module (with its variables, or abstractly from ``sample_input``)."""
    model = adapt(module, argname)
    if variables is not None:
        variables = as_variables(variables, argname)[0]
    return model.trace(variables, one_input(sample_input), call_kwargs, argname).root


def module_layers(
    module: nn.Module,
    variables: Variables | None = None,
    *,
    sample_input: ArrayTree = None,
    call_kwargs: Mapping[str, Any] | None = None,
) -> list[Layer]:
    """Returns a module's layers and placeholders in call order (the layers stage).

    Args:
      module: a linen module (or an NNX model).
      variables: its variables; the layers then hold those arrays (and an input can be
        inferred). Without, an abstract init supplies the shapes.
      sample_input: one example batch (required without ``variables``); a tuple, or
        ``dpiat_jax.Inputs(x, y)``, for several positional inputs.
      call_kwargs: keyword arguments of ``__call__``.

    Returns:
      The :class:`~dpiat_jax.layers.Layer` records in call order.

    >>> import flax.linen as nn
    >>> import jax.numpy as jnp
    >>> [layer.kind for layer in module_layers(nn.Dense(2), sample_input=jnp.zeros((1, 3)))]
    ['dense']
    """
    return layers(_module_root(module, variables, sample_input, call_kwargs, "module"))


def module_blocks(
    module: nn.Module,
    variables: Variables | None = None,
    *,
    sample_input: ArrayTree = None,
    call_kwargs: Mapping[str, Any] | None = None,
    argname: str = "module",
) -> list:
    """Returns a module's block tree (the blocks stage).

    Args:
      module, variables, sample_input, call_kwargs: as for :func:`module_layers`.
      argname: the name errors give ``module``.

    Returns:
      Nested lists of :class:`~dpiat_jax.layers.Layer` records;
      :func:`dpiat_jax.blocks.to_spec_tree` turns it into the LayerSpec tree that the
      alignment sees.

    >>> import flax.linen as nn
    >>> import jax.numpy as jnp
    >>> [layer.name for layer in module_blocks(nn.Dense(2), sample_input=jnp.zeros((1, 3)))]
    ['<root>']
    """
    return blocks(_module_root(module, variables, sample_input, call_kwargs, argname))


def _is_pair(obj: Any) -> bool:
    """Whether ``obj`` is a ``(definition, variables)`` pair (a linen module or a
    Hugging Face model, and its variables)."""
    return (
        isinstance(obj, (tuple, list))
        and len(obj) == 2
        and (isinstance(obj[0], nn.Module) or is_hf_model(obj[0]))
    )


def _model_of(obj: Any, argname: str) -> tuple[Any, Variables | None]:
    """The adapter and variables of a ``(definition, variables)`` pair, a bare module,
    or something a user holds (an NNX or Hugging Face model, a TrainState of a linen
    module); the variables are None where the adapter's own (or none) are meant."""
    if _is_pair(obj):
        return adapt(obj[0], argname), as_variables(obj[1], argname)[0]
    if isinstance(obj, nn.Module):
        return adapt(obj, argname), None
    held = held_definition(obj)
    if held is None:
        raise TypeError(
            f"`{argname}` must be a spec tree (nested list of LayerSpec), a (module, "
            "variables) pair, a linen module, an NNX model, a Hugging Face Flax model or "
            f"a TrainState built with apply_fn=module.apply, got {type(obj).__name__}."
        )
    variables = None if held is obj else as_variables(obj, argname)[0]
    return adapt(held, argname), variables


def _spec_of(
    obj: Any, argname: str, sample_input: Any, call_kwargs: Any, src: Traced | None = None
) -> tuple[list, Traced | None]:
    """A spec tree from a tree, a ``(module, variables)`` pair, a bare module or a model
    a user holds (:func:`_model_of`); also returns the trace (so a bare target can reuse
    the source's input, given as ``src``, with a warning when its shapes depend on an
    inferred choice)."""
    if isinstance(obj, (list, LayerSpec)) and not _is_pair(obj):
        return validate_tree(obj, argname=argname), None
    model, variables = _model_of(obj, argname)
    variables = abstract_tree(model.own_variables() if variables is None else variables)
    if sample_input is None and src is not None:
        traced = trace_target(model, variables, src, None, call_kwargs, argname)
    else:
        traced = model.trace(variables, sample_input, call_kwargs, argname)
    return to_spec_tree(blocks(traced.root)), traced


def similarity(
    src: Any,
    dst: Any,
    *,
    sample_input: ArrayTree = None,
    call_kwargs: Mapping[str, Any] | tuple | None = None,
    matcher: str | Matcher = "dp",
) -> float:
    """Returns ``score(src, dst) / score(dst, dst)``: how completely ``src`` can seed
    ``dst`` (1.0 for a full cover, toward 0 as architectures diverge; not symmetric).

    Args:
      src: a spec tree, a ``(module, variables)`` pair, an NNX model, a Hugging Face
        Flax model object (its module and params) or a TrainState built with
        ``apply_fn=module.apply``; the variables of a pair may be a TrainState too.
      dst: likewise, or a bare module whose shapes come from an abstract init with the
        source's input.
      sample_input: one batch for both (``dpiat_jax.Inputs(x, y)`` for several
        positional inputs), or a ``(src_input, dst_input)`` pair.
      call_kwargs: ``__call__`` keyword arguments, one for both or a pair.
      matcher: ``"dp"`` (default), ``"cross"`` (the same ratio with cross-level
        matches) or ``"bipartite"`` (its normalised score); no other matcher defines a
        similarity (``ValueError``).

    Returns:
      The similarity, a float in [0, 1].

    >>> from dpiat_jax.spec import LayerSpec
    >>> similarity([LayerSpec("dense", (4, 4))], [LayerSpec("dense", (4, 8))])
    0.5
    """
    matcher = similarity_matcher(matcher)  # rejects matchers without a similarity
    src_in, dst_in = split_inputs(sample_input)
    src_kw, dst_kw = split_kwargs(call_kwargs)
    src_tree, traced = _spec_of(src, "src", src_in, src_kw)
    dst_tree, _ = _spec_of(dst, "dst", dst_in, dst_kw, src=traced)
    return tree_similarity(src_tree, dst_tree, matcher)


def rank_sources(
    candidates: Sequence[Any],
    target: Any,
    *,
    sample_input: ArrayTree = None,
    call_kwargs: Mapping[str, Any] | tuple | None = None,
) -> list[tuple[int, float]]:
    """Ranks candidate sources by their similarity to ``target``, best first.

    All similarities are computed in one batched call per nesting depth.

    Args:
      candidates: spec trees, ``(module, variables)`` pairs, NNX or Hugging Face models
        or TrainStates (as ``src`` of :func:`similarity`).
      target: a spec tree, a module, a ``(module, variables)`` pair or a model a user
        holds (as ``dst`` of :func:`similarity`).
      sample_input, call_kwargs: as for :func:`similarity`.

    Returns:
      ``(candidate index, similarity)`` pairs, best first; ties keep the candidates'
      order.

    >>> from dpiat_jax.spec import LayerSpec
    >>> target = [LayerSpec("dense", (4, 8))]
    >>> rank_sources([[LayerSpec("dense", (4, 2))], [LayerSpec("dense", (4, 4))]], target)
    [(1, 0.5), (0, 0.25)]
    """
    if not isinstance(candidates, Sequence) or isinstance(candidates, (str, bytes)):
        raise TypeError("`candidates` must be a list of spec trees or (module, variables).")
    src_in, dst_in = split_inputs(sample_input)
    src_kw, dst_kw = split_kwargs(call_kwargs)
    trees: list[SpecTree] = []
    first: Traced | None = None
    for i, c in enumerate(candidates):
        tree, traced = _spec_of(c, f"candidates[{i}]", src_in, src_kw)
        trees.append(tree)
        first = first if first is not None else traced
    dst_tree, _ = _spec_of(target, "target", dst_in, dst_kw, src=first)
    return rank_trees(trees, dst_tree)
