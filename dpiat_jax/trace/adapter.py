"""Model adapters: the one place where a linen module and an NNX model part ways.

A model enters the pipeline as a linen module (a definition whose variables live
apart), as an NNX model (which holds its own variables), or as what users hold: a
Hugging Face Flax model object (``transformers.FlaxPreTrainedModel``: a linen
``.module``, its ``.params`` and a ``.config``; duck-typed, transformers is never
imported) or a ``TrainState`` whose ``apply_fn`` is a linen module's ``apply``.
:func:`adapt` makes the choice once and returns an adapter with the same four
operations for all:

* ``trace(variables, sample_input, kwargs, argname)``: the module hierarchy in call
  order (abstractly, ``jax.eval_shape``), as a :class:`Traced` record; ``call_kwargs``
  and the number of positional inputs are checked against ``__call__`` first, sown
  collections (``intermediates``) are ignored with a warning
  (:mod:`dpiat_jax.trace.sown`), and a missing input is inferred
  (:mod:`dpiat_jax.trace.inference`);
* ``own_variables()``: the variables the model carries (an NNX model's state; None for
  a linen module);
* ``init(rng, sample_input, kwargs)``: the target's fresh variables, a pure function
  that runs inside a jitted program (a linen ``init``; an NNX model's own state);
* ``result(variables, form)``: what a transfer returns for these variables (the dict
  in the source's form for linen, a new model for NNX, the params dict in the form the
  Hugging Face model keeps, so that ``model.params = result`` works).

A Hugging Face model also brings a default input (:func:`hf_sample_input`: the inputs
its own ``init_weights`` passes to its module, token inputs of length
``min(max_position_embeddings, 16)``) and runs in inference mode (``deterministic=True``).

Every error names the user's argument (``argname``) and says what to pass instead.
:func:`trace_target` traces a target with the source's input and warns when the
target's shapes depend on which input was inferred.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from dpiat_jax.layers import ModuleNode
from dpiat_jax.trace import inputs
from dpiat_jax.trace import nnx as nnx_trace
from dpiat_jax.trace.huggingface import (
    has_attribute,
    hf_call_kwargs,
    hf_sample_input,
    hf_variables,
    is_hf_model,
)
from dpiat_jax.trace.inference import InferredInput, check_choice, find_fitting_input
from dpiat_jax.trace.inputs import CallSpec, positional
from dpiat_jax.trace.linen import trace
from dpiat_jax.trace.sown import drop_sown, split_sown
from dpiat_jax.types import ArrayTree, PRNGKey, Variables

if TYPE_CHECKING:
    from dpiat_jax.arguments import VariablesForm

__all__ = [
    "Traced",
    "LinenModel",
    "NnxModel",
    "HfModel",
    "Model",
    "adapt",
    "held_definition",
    "hf_sample_input",
    "hf_variables",
    "is_hf_model",
    "model_variables",
    "train_state_module",
    "trace_target",
]


@dataclasses.dataclass(frozen=True)
class Traced:
    """A traced model: its hierarchy and how it was called.

    Attributes:
      root: the :class:`~dpiat_jax.layers.ModuleNode` hierarchy; its layers hold the
        traced variables (arrays, or ``jax.ShapeDtypeStruct`` leaves).
      variables: the variables the layers hold.
      sample_input: the input used, abstract (``jax.ShapeDtypeStruct`` leaves).
      kwargs: the call keyword arguments used (with any inference-mode flag added).
      inferred: how the input was inferred from the variables (None when given).

    >>> traced = adapt(nn.Dense(3), "module").trace(None, jnp.zeros((1, 2)), {}, "module")
    >>> traced.sample_input
    ShapeDtypeStruct(shape=(1, 2), dtype=float32)
    """

    root: ModuleNode
    variables: Variables
    sample_input: ArrayTree
    kwargs: Mapping[str, Any]
    inferred: InferredInput | None = None


def _zeros(sample_input: ArrayTree) -> ArrayTree:
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sample_input)


@dataclasses.dataclass(frozen=True)
class LinenModel:
    """A ``flax.linen`` module: a definition whose variables are passed apart.

    >>> model = adapt(nn.Dense(3), "dst_def")
    >>> traced = model.trace(None, jnp.zeros((1, 2)), {}, "dst_def")
    >>> traced.variables["params"]["kernel"].shape
    (2, 3)
    """

    module: nn.Module

    def own_variables(self) -> Variables | None:
        """Returns None: a linen module carries no variables."""
        return None

    def trace(
        self,
        variables: Variables | None,
        sample_input: ArrayTree | None,
        kwargs: Mapping[str, Any] | None,
        argname: str,
    ) -> Traced:
        """Traces the module (abstractly); see :class:`Traced`.

        Args:
          variables: the variables the layers should hold; they are checked against
            the module's shapes. None for an abstract init (``sample_input`` needed).
          sample_input: one example batch (array or ``jax.ShapeDtypeStruct``); None to
            infer one from ``variables``' shapes.
          kwargs: ``__call__`` keyword arguments; a required mode flag left out is set
            to inference mode.
          argname: the user's argument, for error messages.

        Returns:
          The :class:`Traced` record.

        Raises:
          TypeError: a keyword ``__call__`` does not take, or a wrong number of
            positional inputs.
          ValueError: the input does not run, cannot be inferred, or the variables do
            not fit the module.

        Warns:
          IgnoredCollectionWarning: ``variables`` hold sown values (``intermediates``).
        """
        module, name = self.module, type(self.module).__name__
        kwargs = inputs.call_kwargs_for(module, kwargs)
        if variables is None and sample_input is None:
            raise ValueError(
                f"`{argname}` is a bare module: pass sample_input= so its layers can be "
                "discovered (or pass its variables)."
            )
        inputs.check_call(module, sample_input, kwargs, argname)
        if variables is not None:
            variables = drop_sown(variables, argname, name)

        def probe(x: ArrayTree) -> tuple[Variables, ModuleNode]:
            root, abstract = trace(module, variables, positional(x), kwargs)
            return abstract, root

        if sample_input is None:
            found, root = find_fitting_input(probe, variables, argname, name)
            return Traced(root, variables, found.chosen, kwargs, found)
        x = inputs.abstract_tree(sample_input)
        try:
            abstract, root = probe(x)
        except Exception as err:  # noqa: BLE001 - re-raised with the arguments named
            raise inputs.init_error(module, CallSpec(x, kwargs), argname, err) from err
        if variables is None:
            return Traced(root, abstract, x, kwargs)
        inputs.check_variables_fit(module, variables, abstract, argname)
        return Traced(root, variables, x, kwargs)

    def init(self, rng: PRNGKey, sample_input: ArrayTree, kwargs: Mapping[str, Any]) -> dict:
        """Returns ``module.init`` for zeros of the input's shape (a plain dict).

        The ``params`` stream takes ``rng``, ``dropout`` ``fold_in(rng, 1)``.
        """
        rngs = {"params": rng, "dropout": jax.random.fold_in(rng, 1)}
        fresh = self.module.init(rngs, *positional(_zeros(sample_input)), **kwargs)
        return flax.core.unfreeze(fresh)

    def result(self, variables: Variables, form: VariablesForm | None = None) -> ArrayTree:
        """Returns the target's variables in the form the source was given in.

        Args:
          variables: the target's variables dict.
          form: the source's form (:class:`~dpiat_jax.arguments.VariablesForm`); None
            for the whole dict.

        Returns:
          The whole dict or its ``"params"``, frozen when the source was.
        """
        if form is None:
            return variables
        out = variables if form.whole else variables["params"]
        return flax.core.freeze(out) if form.frozen else out

    @property
    def linen_module(self) -> nn.Module | None:
        """The module (its jaxpr gives the channel graph)."""
        return self.module


@dataclasses.dataclass(frozen=True)
class NnxModel:
    """A Flax NNX model: a definition and its variables in one object.

    >>> from flax import nnx
    >>> model = adapt(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), "dst_def")
    >>> model.trace(None, jnp.zeros((1, 2)), {}, "dst_def").root.children[0].kind
    'dense'
    """

    model: Any

    def own_variables(self) -> Variables:
        """Returns the model's variables as a linen-style dict."""
        return nnx_trace.nnx_variables(self.model)

    def trace(
        self,
        variables: Variables | None,
        sample_input: ArrayTree | None,
        kwargs: Mapping[str, Any] | None,
        argname: str,
    ) -> Traced:
        """Traces the model (abstractly); arguments, errors and warnings as for
        :meth:`LinenModel.trace`, ``variables`` defaulting to the model's own. Without an
        input, candidates from the variables' shapes are tried until one runs."""
        model, name, kwargs = self.model, type(self.model).__name__, dict(kwargs or {})
        inputs.check_call(model, sample_input, kwargs, argname)
        variables = self.own_variables() if variables is None else variables
        variables = drop_sown(variables, argname, name)

        def probe(x: ArrayTree) -> tuple[Variables, ModuleNode]:
            # An NNX model's variables do not depend on the input: any input that runs.
            return variables, nnx_trace.trace_nnx(model, x, kwargs, variables)[0]

        if sample_input is None:
            found, root = find_fitting_input(probe, variables, argname, name)
            return Traced(root, variables, found.chosen, kwargs, found)
        x = inputs.abstract_tree(sample_input)
        try:
            _, root = probe(x)
        except Exception as err:  # noqa: BLE001 - re-raised with the arguments named
            raise inputs.init_error(model, CallSpec(x, kwargs), argname, err) from err
        return Traced(root, variables, x, kwargs)

    def init(self, rng: PRNGKey, sample_input: ArrayTree, kwargs: Mapping[str, Any]) -> dict:
        """Returns the model's own variables (without sown values): an NNX target holds
        its fresh init."""
        del rng, sample_input, kwargs
        return split_sown(self.own_variables())[0]

    def result(self, variables: Variables, form: VariablesForm | None = None) -> Any:
        """Returns a new model holding ``variables`` (the given model is not changed;
        an NNX target is returned as a model whatever the source's ``form``)."""
        del form
        return nnx_trace.with_variables(self.model, variables)

    @property
    def linen_module(self) -> nn.Module | None:
        """None: the channel graph of an NNX model follows the call order."""
        return None


# ----------------------------------------------------------------------------------
# What users hold: Hugging Face Flax model objects (:mod:`dpiat_jax.trace.huggingface`)
# and TrainStates.


@dataclasses.dataclass(frozen=True)
class HfModel:
    """A Hugging Face Flax model object: its linen ``module``, its ``params`` and a
    default input from its ``config``.

    >>> from types import SimpleNamespace
    >>> hf = SimpleNamespace(module=nn.Dense(3), params=None, config=None)
    >>> traced = adapt(hf, "dst_def").trace(None, jnp.zeros((1, 2)), {}, "dst_def")
    >>> traced.variables["params"]["kernel"].shape
    (2, 3)
    """

    model: Any

    def own_variables(self) -> Variables | None:
        """Returns the model's parameters as a variables dict (:func:`hf_variables`)."""
        return hf_variables(self.model)

    def trace(
        self,
        variables: Variables | None,
        sample_input: ArrayTree | None,
        kwargs: Mapping[str, Any] | None,
        argname: str,
    ) -> Traced:
        """Traces the module (abstractly) as :meth:`LinenModel.trace` does, with the
        model's own parameters when ``variables`` is None, the default input of
        :func:`hf_sample_input` and ``deterministic=True``."""
        module = self.model.module
        x = hf_sample_input(self.model, sample_input, argname)
        variables = self.own_variables() if variables is None else variables
        kwargs = hf_call_kwargs(module, kwargs)
        return LinenModel(module).trace(variables, x, kwargs, argname)

    def init(self, rng: PRNGKey, sample_input: ArrayTree, kwargs: Mapping[str, Any]) -> dict:
        """Returns the module's fresh variables, as :meth:`LinenModel.init`."""
        return LinenModel(self.model.module).init(rng, sample_input, kwargs)

    def result(self, variables: Variables, form: VariablesForm | None = None) -> dict:
        """Returns the params in the form the Hugging Face model keeps them, whatever
        the source's ``form``: the params collection, or the whole dict when it has
        other collections (``batch_stats``); ``model.params = result`` works."""
        del form
        return variables["params"] if set(variables) == {"params"} else variables

    @property
    def linen_module(self) -> nn.Module | None:
        """The model's linen module (its jaxpr gives the channel graph)."""
        return self.model.module


def train_state_module(obj: Any) -> nn.Module | None:
    """Returns the linen module of a ``TrainState`` built with ``apply_fn=module.apply``.

    Args:
      obj: anything a user passes as a model.

    Returns:
      The module whose bound ``apply`` is ``obj.apply_fn``; None otherwise.

    >>> from types import SimpleNamespace
    >>> state = SimpleNamespace(apply_fn=nn.Dense(2).apply, params={})
    >>> train_state_module(state).features
    2
    """
    if isinstance(obj, (nn.Module, Mapping, type)) or not has_attribute(obj, "params"):
        return None
    module = getattr(getattr(obj, "apply_fn", None), "__self__", None)
    return module if isinstance(module, nn.Module) else None


def held_definition(obj: Any) -> Any | None:
    """Returns the definition an object a user holds carries, else None.

    Args:
      obj: what a user passes as the source's variables (``src_params``).

    Returns:
      An NNX model or a Hugging Face model object itself, the linen module of a
      ``TrainState`` (:func:`train_state_module`); None for a variables dict.

    >>> held_definition({"params": {}}) is None
    True
    """
    if nnx_trace.is_nnx(obj) or is_hf_model(obj):
        return obj
    return train_state_module(obj)


#: A model adapter.
Model = LinenModel | NnxModel | HfModel


def adapt(obj: Any, argname: str) -> Model:
    """Returns the adapter for a linen module, an NNX model, a Hugging Face Flax model
    object or a ``TrainState`` of a linen module.

    Args:
      obj: a ``flax.linen.Module`` instance, an ``nnx.Module`` instance, a Hugging Face
        Flax model (:func:`is_hf_model`), or a ``TrainState`` whose ``apply_fn`` is a
        module's ``apply`` (its module is the definition).
      argname: the user's argument, for the error message.

    Returns:
      A :class:`LinenModel`, an :class:`NnxModel` or an :class:`HfModel`.

    Raises:
      TypeError: for anything else (a module class instead of an instance says so).

    >>> type(adapt(nn.Dense(3), "dst_def")).__name__
    'LinenModel'
    """
    if nnx_trace.is_nnx(obj):
        return NnxModel(obj)
    if is_hf_model(obj):
        return HfModel(obj)
    module = train_state_module(obj)
    if module is not None:
        return LinenModel(module)
    if not isinstance(obj, (nn.Module, Mapping, type)) and has_attribute(obj, "params"):
        raise TypeError(
            f"`{argname}` is a {type(obj).__name__} (a train state) whose apply_fn is not "
            "a linen module's apply: pass the module itself as the definition."
        )
    return LinenModel(inputs.check_module(obj, argname))


def model_variables(obj: Any) -> Variables | None:
    """Returns the variables an object carries itself, else None.

    Args:
      obj: anything a user passes as source variables.

    Returns:
      A linen-style variables dict for an NNX model or a Hugging Face model object
      (:func:`hf_variables`); None otherwise (a ``TrainState`` is unpacked by
      :func:`dpiat_jax.arguments.as_variables`).

    >>> model_variables({"params": {}}) is None
    True
    """
    if nnx_trace.is_nnx(obj):
        return nnx_trace.nnx_variables(obj)
    return hf_variables(obj) if is_hf_model(obj) else None


def trace_target(
    model: Model,
    variables: Variables | None,
    src: Traced,
    sample_input: ArrayTree | None,
    kwargs: Mapping[str, Any] | None,
    argname: str = "dst_def",
) -> Traced:
    """Traces a target with its own input, or else the source's (given or inferred).

    A Hugging Face target without its own input uses its default input
    (:func:`hf_sample_input`), not the source's. When the source's input was inferred
    and another input fits the source as well, the target is traced with that one too:
    if its variables differ, the choice decides the target's shapes, and an
    :class:`~dpiat_jax.trace.inference.InputInferenceWarning` says so (an NNX target,
    whose variables are its own, never warns).

    Args:
      model: the target's adapter.
      variables: the target's own variables (an NNX model's, abstract) or None.
      src: the traced source.
      sample_input: the target's input; None to use the source's.
      kwargs: the target's ``__call__`` keyword arguments.
      argname: the target's argument, for messages.

    Returns:
      The traced target.

    >>> x = jnp.zeros((1, 2))
    >>> src = adapt(nn.Dense(3), "src_def").trace(None, x, {}, "src_def")
    >>> trace_target(adapt(nn.Dense(5), "dst_def"), None, src, None, {}).sample_input
    ShapeDtypeStruct(shape=(1, 2), dtype=float32)
    """
    if isinstance(model, HfModel):
        return model.trace(variables, sample_input, kwargs, argname)
    x = src.sample_input if sample_input is None else sample_input
    traced = model.trace(variables, x, kwargs, argname)
    if sample_input is None and model.own_variables() is None:

        def shapes(other: ArrayTree) -> Variables:
            return model.trace(variables, other, kwargs, argname).variables

        check_choice(shapes, traced.variables, src.inferred, argname)
    return traced
