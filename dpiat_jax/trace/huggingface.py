"""Hugging Face Flax model objects: their variables, a default input and inference mode.

A ``transformers.FlaxPreTrainedModel`` carries a linen ``.module``, its ``.params`` and
a ``.config``; it is duck-typed here (:func:`is_hf_model`), transformers is never
imported. :func:`hf_variables` reads its parameters as a variables dict,
:func:`hf_sample_input` builds the input its ``init_weights`` uses (read from a dry run
of ``init_weights`` on a copy of the model; token inputs of length
``min(max_position_embeddings, 16)``) and
:func:`hf_call_kwargs` adds the inference-mode flag. The adapter that uses them is
:class:`dpiat_jax.trace.adapter.HfModel`.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from dpiat_jax.trace import inputs
from dpiat_jax.trace.inputs import Inputs
from dpiat_jax.types import ArrayTree, Variables

__all__ = [
    "has_attribute",
    "hf_call_kwargs",
    "hf_sample_input",
    "hf_variables",
    "is_hf_model",
]

#: Token inputs of Hugging Face text models, built with the token ids' shape.
_TOKEN_INPUTS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "position_ids",
    "decoder_input_ids",
    "decoder_attention_mask",
    "decoder_position_ids",
)
#: The default sequence length of a Hugging Face text model's input (at most).
_TEXT_LENGTH = 16
#: Inference-mode keywords a Hugging Face module's ``__call__`` takes, and their values.
_INFERENCE_FLAGS = (("deterministic", True), ("train", False))


def has_attribute(obj: Any, name: str) -> bool:
    """Whether ``obj`` has ``name``, without running a property (a Hugging Face model
    built with ``_do_init=False`` raises ValueError on reading ``params``).

    Args:
      obj: any object.
      name: an attribute name.

    Returns:
      True when ``inspect.getattr_static`` finds it.

    >>> has_attribute(nn.Dense(2), "features"), has_attribute(nn.Dense(2), "params")
    (True, False)
    """
    try:
        inspect.getattr_static(obj, name)
    except AttributeError:
        return False
    return True


def is_hf_model(obj: Any) -> bool:
    """Whether ``obj`` is a Hugging Face Flax model object (duck-typed).

    A ``transformers.FlaxPreTrainedModel`` has a linen ``module``, its ``params`` and a
    ``config``; transformers itself is never imported.

    Args:
      obj: anything a user passes as a model or as variables.

    Returns:
      True when ``obj`` has ``module`` (a linen module), ``params`` and ``config``.

    >>> from types import SimpleNamespace
    >>> is_hf_model(SimpleNamespace(module=nn.Dense(2), params={}, config=None))
    True
    >>> is_hf_model(nn.Dense(2))
    False
    """
    if isinstance(obj, (nn.Module, Mapping, type)):
        return False
    names = ("module", "params", "config")
    return all(has_attribute(obj, n) for n in names) and isinstance(obj.module, nn.Module)


def hf_variables(model: Any) -> Variables | None:
    """Returns a Hugging Face model's parameters as a variables dict.

    Hugging Face keeps a model's ``params`` as the params collection, or as the whole
    variables dict for models with batch statistics (ResNet: ``{"params": ...,
    "batch_stats": ...}``); both become ``{"params": ..., ...}``.

    Args:
      model: a Hugging Face Flax model object (:func:`is_hf_model`).

    Returns:
      A plain variables dict, or None for a model built without parameters
      (``_do_init=False``).

    >>> from types import SimpleNamespace
    >>> hf_variables(SimpleNamespace(params={"dense": {"bias": 0}}))
    {'params': {'dense': {'bias': 0}}}
    """
    try:
        params = model.params
    except ValueError:  # built with _do_init=False: it holds no parameters
        return None
    if params is None:
        return None
    plain = flax.core.unfreeze(params)
    if "params" in plain and isinstance(plain["params"], Mapping):
        return plain
    return {"params": plain}


class _Captured(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by :class:`_Recorder` with the inputs ``init_weights`` passes."""

    def __init__(self, args: tuple, kwargs: dict) -> None:
        super().__init__("captured")
        self.args, self.kwargs = args, kwargs


class _Recorder:
    """Stands for a Hugging Face model's module while its ``init_weights`` runs: its
    ``init`` records the inputs (abstract) and stops the run."""

    def __init__(self, module: nn.Module) -> None:
        self._wrapped = module

    def init(self, rngs: Any, *args: Any, **kwargs: Any) -> None:
        del rngs
        raise _Captured(inputs.abstract_tree(args), inputs.abstract_tree(kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)


def _init_weights_inputs(model: Any) -> list[tuple[str, Any]] | None:
    """The positional inputs, by name and in order, that the model's own
    ``init_weights`` passes to its module (abstract; nothing is computed), or None
    where that cannot be read (no ``init_weights``, a model that keeps its module
    elsewhere, an ``init_weights`` that fails before calling ``init``).

    ``init_weights`` knows every input a model needs (CLIP's token ids and pixels,
    Whisper's audio features and decoder ids); it runs on a shallow copy of the model
    whose module is a :class:`_Recorder`, so the caller's model is untouched."""
    init_weights = getattr(type(model), "init_weights", None)
    shape = getattr(model, "input_shape", None)
    if init_weights is None or shape is None:
        return None
    proxy = copy.copy(model)
    recorder = _Recorder(model.module)
    try:
        if "module" in vars(proxy):  # a plain attribute, not transformers' property
            proxy.module = recorder
        else:
            proxy._module = recorder
        if proxy.module is not recorder:
            return None
        jax.eval_shape(lambda: init_weights(proxy, jax.random.PRNGKey(0), shape))
    except _Captured as captured:
        args, kwargs = captured.args, captured.kwargs
    except Exception:  # noqa: BLE001 - any failure: the signature's reading answers
        return None
    else:
        return None
    params = list(inspect.signature(type(model.module).__call__).parameters.values())[1:]
    try:
        bound = inspect.Signature(params).bind_partial(*args, **kwargs).arguments
    except TypeError:
        return None
    arrays = [p.name for p in params if isinstance(bound.get(p.name), jax.ShapeDtypeStruct)]
    if not arrays:
        return None
    names = [p.name for p in params][: [p.name for p in params].index(arrays[-1]) + 1]
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind not in kinds for p in params[: len(names)]):
        return None
    return [(n, bound.get(n, params[i].default)) for i, n in enumerate(names)]


def _traced_positional(module: nn.Module) -> list[str]:
    """The names of the positional inputs ``module.__call__`` is traced with: its leading
    positional parameters that are required or token inputs (``attention_mask``,
    ``position_ids``... even with a default of None), as the model's ``init_weights``
    passes them; Llama's rotary embedding, for one, needs ``position_ids`` given."""
    params = list(inspect.signature(type(module).__call__).parameters.values())[1:]
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = []
    for p in params:
        if p.kind not in kinds or (p.default is not p.empty and p.name not in _TOKEN_INPUTS):
            break
        names.append(p.name)
    return names


def _config_value(config: Any, name: str) -> Any:
    try:
        return getattr(config, name, None)
    except Exception:  # noqa: BLE001 - a config that refuses an unknown attribute
        return None


def _text_length(config: Any) -> int:
    longest = _config_value(config, "max_position_embeddings")
    return min(int(longest), _TEXT_LENGTH) if longest else _TEXT_LENGTH


def _pixel_shape(model: Any) -> tuple[int, ...] | None:
    """The pixel input shape ``init_weights`` uses (its ``input_shape`` when 4-D, else
    ``(1, image_size, image_size, num_channels)`` from the config)."""
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, tuple) and len(shape) == 4 and all(isinstance(n, int) for n in shape):
        return shape
    size = _config_value(model.config, "image_size")
    channels = _config_value(model.config, "num_channels") or 3
    return None if not isinstance(size, int) else (1, size, size, channels)


def _default_input(model: Any, name: str, tokens: tuple[int, ...], argname: str) -> Any:
    """One positional input of a Hugging Face module, abstract."""
    if name in _TOKEN_INPUTS:
        return jax.ShapeDtypeStruct(tokens, jnp.int32)
    shape = _pixel_shape(model) if name == "pixel_values" else None
    if shape is None:
        raise ValueError(
            f"`{argname}` ({type(model).__name__}): no default input for its module's "
            f"`{name}` argument; pass sample_input= (dpiat_jax.Inputs(...) for several "
            "positional inputs)."
        )
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def hf_sample_input(model: Any, given: ArrayTree | None, argname: str) -> ArrayTree:
    """Returns the input a Hugging Face model is traced with.

    Without ``given``, the inputs the model's own ``init_weights`` passes to its module
    (:func:`_init_weights_inputs`: CLIP's token ids and pixels, Whisper's audio
    features and decoder ids), abstract, in ``__call__``'s positional order; token
    inputs of the token ids' shape are made ``(1, min(max_position_embeddings, 16))``.
    Where ``init_weights`` cannot be read, every positional input ``__call__``
    requires, and the token inputs it takes positionally after them
    (:func:`_traced_positional`), is built from the config: token inputs int32 of that
    shape, ``pixel_values`` float32 of the model's ``input_shape`` (NHWC). A single
    array given for a module that requires several inputs is its first one, and the
    others are built alike (token inputs of its shape). An ``Inputs`` record is kept.

    Args:
      model: a Hugging Face Flax model object.
      given: the user's input for it, or None.
      argname: the user's argument, for the error message.

    Returns:
      One abstract input, or an :class:`~dpiat_jax.trace.inputs.Inputs` record.

    Raises:
      ValueError: a required input that cannot be built from the config.

    >>> from types import SimpleNamespace
    >>> class Net(nn.Module):
    ...     def __call__(self, input_ids, attention_mask, deterministic=True):
    ...         return input_ids
    >>> config = SimpleNamespace(max_position_embeddings=512)
    >>> hf_sample_input(SimpleNamespace(module=Net(), config=config), None, "dst_def")
    Inputs(shape (1, 16) dtype int32, shape (1, 16) dtype int32)
    """
    names = _traced_positional(model.module)
    if isinstance(given, Inputs) or (given is not None and len(names) <= 1):
        return given
    if given is not None:
        tokens = tuple(given.shape)
        rest = [_default_input(model, n, tokens, argname) for n in names[1:]]
        return Inputs(inputs.abstract_tree(given), *rest)
    tokens = (1, _text_length(model.config))
    captured = _init_weights_inputs(model)
    if captured is not None:
        ids = dict(captured).get("input_ids")
        built = [
            jax.ShapeDtypeStruct(tokens, jnp.int32)
            if n in _TOKEN_INPUTS and ids is not None and getattr(x, "shape", None) == ids.shape
            else x
            for n, x in captured
        ]
    else:
        built = [_default_input(model, n, tokens, argname) for n in names]
    return built[0] if len(built) == 1 else Inputs(*built)


def hf_call_kwargs(module: nn.Module, kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Returns the user's keywords plus the inference-mode flags ``__call__`` takes.

    Args:
      module: a Hugging Face model's linen module.
      kwargs: the user's call keywords, or None.

    Returns:
      A new dict: ``deterministic=True`` / ``train=False`` added where ``__call__``
      takes them and the user did not set them.

    >>> class Net(nn.Module):
    ...     def __call__(self, x, deterministic: bool = False):
    ...         return x
    >>> hf_call_kwargs(Net(), None)
    {'deterministic': True}
    """
    out = dict(kwargs or {})
    names = inspect.signature(type(module).__call__).parameters
    for flag, value in _INFERENCE_FLAGS:
        if flag in names and flag not in out:
            out[flag] = value
    return out
