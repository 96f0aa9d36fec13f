"""Deepening that keeps the source's function: identity blocks where the target is deeper.

When the target has more blocks than the source, the ``dp`` matcher seeds a *run* of
consecutive target blocks from one source block (a ResNet-8 stage of one block into a
ResNet-14 stage of two: both target blocks copy the one source block). Copying the block
into every block of the run composes it with itself; with ``deepen="identity"`` the
*first* block of the run takes the source values and every later one becomes an identity
block: the last parametrised layer of its residual branch is zero-initialised (a
BatchNorm's scale and bias, or a Dense/Conv kernel and bias), so ``x + branch(x) = x``
and the deeper network computes the source's function at step 0.

This is Net2DeeperNet's idea (Chen, Goodfellow and Shlens, "Net2Net", ICLR 2016: new
layers start as identities) in the form residual networks allow, the zero-initialised
residual branch of Goyal et al. ("Accurate, Large Minibatch SGD", 2017: the last BN
gamma of each residual block is zero), Fixup (Zhang et al., 2019) and ReZero
(Bachlechner et al., 2020).

Why the first block of a run keeps the values: in ResNet-style stages the first block is
the one that changes the shape (the stride and the projection shortcut), so it is the one
that matches the source block's role; the later blocks of a stage have identity
shortcuts and can become identities. The first block also sees the input the source
block was trained on.

Which blocks are residual is read from the target's jaxpr (each equation keeps its
module's name stack): a block qualifies when it is one call site with one computed input
``x`` and one output, and zeroing the parameters of one of its layers (or of two, for a
block of two residual branches: a transformer's attention and MLP) makes its output
equal to ``x`` by a symbolic pass over its equations (zero propagates through products,
contractions and reshapes, ``x + 0 = x``, and ``relu(x) = x`` when ``x`` is itself the
output of a ``relu``). The layers are tried last first. A block of a run that does not
qualify keeps its copied values and is listed in :attr:`Deepening.kept`.

>>> DEEPEN_MODES
(None, 'identity')
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from dpiat_jax.blocks import tree_leaves
from dpiat_jax.channels import apply_jaxpr
from dpiat_jax.layers import Layer
from dpiat_jax.matching import LayerPair
from dpiat_jax.trace.inputs import positional
from dpiat_jax.types import ArrayTree, ModulePath, Variables
from dpiat_jax.variables import TensorKey, tensor_key

__all__ = [
    "DEEPEN_MODES",
    "Deepening",
    "DeepeningWarning",
    "IdentityBlock",
    "check_deepen",
    "identity_layers",
    "plan_deepening",
    "seed_runs",
    "warn_kept",
    "zero_tensors",
]

#: The values of ``deepen=``: None (copy the source block into every block of a run)
#: or ``"identity"``.
DEEPEN_MODES = (None, "identity")


def check_deepen(deepen: str | None) -> str | None:
    """Validates a ``deepen=`` value.

    Args:
      deepen: None or ``"identity"``.

    Returns:
      ``deepen``.

    Raises:
      ValueError: for any other value, naming the argument and the valid values.

    >>> check_deepen("identity")
    'identity'
    """
    if deepen not in DEEPEN_MODES:
        raise ValueError(f"Unknown deepen {deepen!r}; use one of {list(DEEPEN_MODES)}.")
    return deepen


@dataclasses.dataclass(frozen=True)
class IdentityBlock:
    """A target block that starts as an identity.

    Attributes:
      block: the target block's module path (``"/"``-joined).
      source: the source block that seeds its run (``"/"``-joined).
      zeroed: the target tensors set to zero (the ``params`` of the last parametrised
        layer of each residual branch).

    >>> IdentityBlock("b1", "b0", (("params", "b1", "bn2", "scale"),)).block
    'b1'
    """

    block: str
    source: str
    zeroed: tuple[TensorKey, ...]


class DeepeningWarning(UserWarning):
    """``deepen="identity"`` left new blocks with their copied values: the deeper
    network does not compute the source's function at step 0.

    >>> issubclass(DeepeningWarning, UserWarning)
    True
    """


def warn_kept(deepening: Deepening, *, stacklevel: int = 2) -> None:
    """Warns when ``deepen="identity"`` could not make every new block an identity.

    Args:
      deepening: the plan's :class:`Deepening`.
      stacklevel: as for :func:`warnings.warn`.
    """
    if not deepening.kept:
        return
    counts = collections.Counter(deepening.kept)
    shown = "; ".join(
        f"{name or '<root>'} ({why})" + (f" x{n}" if n > 1 else "")
        for (name, why), n in counts.items()
    )
    warnings.warn(
        f'deepen="identity": {len(deepening.kept)} new block(s) keep their copied values '
        f"instead of starting as identities: {shown}. The deeper network does not compute "
        "the source's function at step 0 (plan.deepening.kept lists them).",
        DeepeningWarning,
        stacklevel=stacklevel,
    )


@dataclasses.dataclass(frozen=True)
class Deepening:
    """What ``deepen="identity"`` did to a plan.

    Attributes:
      identity: the blocks that start as identities.
      kept: ``(target block, reason)`` for the later blocks of a run that keep their
        copied values (not residual, or not verifiable).

    >>> Deepening().zeroed
    ()
    """

    identity: tuple[IdentityBlock, ...] = ()
    kept: tuple[tuple[str, str], ...] = ()

    @property
    def zeroed(self) -> tuple[TensorKey, ...]:
        """Every target tensor set to zero."""
        return tuple(k for block in self.identity for k in block.zeroed)


# ----------------------------------------------------------------------------------
# Runs: consecutive target blocks seeded by one source block.


def _common_prefix(paths: Sequence[ModulePath]) -> ModulePath:
    """The longest common prefix of module paths."""
    if not paths:
        return ()
    out = []
    for parts in zip(*paths):
        if any(p != parts[0] for p in parts):
            break
        out.append(parts[0])
    return tuple(out)


def _layers(node: list) -> list[Layer]:
    return [leaf for leaf in tree_leaves(node) if not leaf.is_placeholder]


def _seed(node: list, seeds: Mapping[ModulePath, ModulePath]) -> ModulePath | None:
    """The source block that seeds a target block: the common prefix of the modules
    that hold its matched layers' sources (None when nothing in it is matched)."""
    sources = [seeds[leaf.path][:-1] for leaf in _layers(node) if leaf.path in seeds]
    prefix = _common_prefix(sources)
    return prefix or None


def seed_runs(pairs: Sequence[LayerPair], dst_blocks: list) -> list[list[tuple[list, str]]]:
    """Finds the runs of adjacent target blocks that one source block seeds.

    Blocks are the lists of the target's block tree (:func:`dpiat_jax.blocks.blocks`);
    a run is a maximal sequence (two or more) of adjacent blocks of one parent whose
    matched layers all come from the same source block.

    Args:
      pairs: the matched layer pairs.
      dst_blocks: the target's block tree.

    Returns:
      One list per run, in target order, of ``(block node, source block path)``.

    >>> import jax
    >>> from dpiat_jax.layers import Layer
    >>> def dense(*path):
    ...     tensors = {"params": {"kernel": jax.ShapeDtypeStruct((2, 2), "float32")}}
    ...     return Layer(path, "dense", "Dense", tensors, "kernel")
    >>> src = [dense("b0", "fc")]
    >>> dst = [[dense("b0", "fc")], [dense("b1", "fc")]]
    >>> pairs = [LayerPair(src[0], dst[0][0], 1.0), LayerPair(src[0], dst[1][0], 1.0)]
    >>> [[source for _, source in run] for run in seed_runs(pairs, dst)]
    [['b0', 'b0']]
    """
    seeds = {p.dst.path: p.src.path for p in pairs}
    runs: list[list[tuple[list, str]]] = []

    def visit(node: list) -> None:
        current: list[tuple[list, str]] = []
        previous: ModulePath | None = None
        for child in [*node, None]:
            seed = _seed(child, seeds) if isinstance(child, list) else None
            if seed is None or seed != previous:
                if len(current) >= 2:
                    runs.append(current)
                current = []
            if seed is not None:
                current.append((child, "/".join(seed)))
            previous = seed
            if isinstance(child, list):
                visit(child)

    visit(dst_blocks)
    return runs


# ----------------------------------------------------------------------------------
# Residual blocks: a symbolic pass over the block's equations.

_OTHER, _ZERO, _SAME, _SAME_NONNEG = range(4)
_KEEPS = frozenset(
    {"convert_element_type", "copy", "copy_p", "reduce_precision", "optimization_barrier"}
)
_KEEPS_ZERO = frozenset(
    """
    neg broadcast_in_dim reshape squeeze expand_dims transpose reduce_sum slice
    dynamic_slice square rev
    """.split()
)
_PRODUCTS = frozenset({"mul", "dot_general", "conv_general_dilated"})
_SUBJAXPRS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def _sub_jaxpr(eqn: Any) -> jcore.Jaxpr | None:
    """The sub-jaxpr of a call-like equation with matching inputs and outputs."""
    for name in _SUBJAXPRS:
        sub = eqn.params.get(name)
        sub = sub.jaxpr if isinstance(sub, jcore.ClosedJaxpr) else sub
        if isinstance(sub, jcore.Jaxpr):
            if len(sub.invars) == len(eqn.invars) and len(sub.outvars) == len(eqn.outvars):
                return sub
            return None
    return None


def _read(env: Mapping[Any, int], v: Any) -> int:
    if isinstance(v, jcore.Literal):
        return _ZERO if np.all(np.asarray(v.val) == 0) else _OTHER
    return env.get(v, _OTHER)


def _step(eqn: Any, vals: list[int]) -> list[int]:
    """The symbolic values of one equation's results."""
    name, n = eqn.primitive.name, len(eqn.outvars)
    sub = _sub_jaxpr(eqn)
    if sub is not None:
        return _run(sub, dict(zip(sub.invars, vals)))
    if name in ("add", "add_any"):
        a, b = vals
        return [b if a == _ZERO else a if b == _ZERO else _OTHER]
    if name == "sub":
        return [vals[0] if vals[1] == _ZERO else _OTHER]
    if name in _PRODUCTS:
        return [_ZERO if _ZERO in vals[:2] else _OTHER]
    if name == "div":
        return [_ZERO if vals[0] == _ZERO else _OTHER]
    if name == "max":
        pair = set(vals)
        if pair == {_ZERO}:
            return [_ZERO]
        return [_SAME_NONNEG if pair == {_ZERO, _SAME_NONNEG} else _OTHER]
    if name in _KEEPS:
        return list(vals[:n])
    if name in _KEEPS_ZERO or name in ("pad", "concatenate"):
        every = vals if name in ("pad", "concatenate") else vals[:1]
        return [_ZERO if all(v == _ZERO for v in every) else _OTHER] * n
    return [_OTHER] * n


def _run(jaxpr: jcore.Jaxpr, env: dict[Any, int], eqns: Sequence[Any] | None = None) -> list[int]:
    """Runs the symbolic pass over ``eqns`` (default: all of ``jaxpr``'s); returns the
    values of ``jaxpr``'s outputs."""
    for eqn in jaxpr.eqns if eqns is None else eqns:
        vals = [_read(env, v) for v in eqn.invars]
        for v, val in zip(eqn.outvars, _step(eqn, vals)):
            env[v] = val
    return [_read(env, v) for v in jaxpr.outvars]


def _nonneg(jaxpr: jcore.Jaxpr, v: Any) -> bool:
    """Whether ``v`` is the output of a ``max(., c >= 0)`` (a relu), possibly inside a
    call (``custom_jvp``, ``jit``)."""
    for eqn in jaxpr.eqns:
        if v not in eqn.outvars:
            continue
        if eqn.primitive.name == "max":
            return any(
                isinstance(u, jcore.Literal) and np.all(np.asarray(u.val) >= 0) for u in eqn.invars
            )
        sub = _sub_jaxpr(eqn)
        return sub is not None and _nonneg(sub, sub.outvars[eqn.outvars.index(v)])
    return False


def _in_block(eqn: Any, block: ModulePath) -> bool:
    """Whether an equation runs inside the module at ``block`` (its name stack, less
    the root module's name, starts with the path)."""
    parts = str(eqn.source_info.name_stack).split("/")[1:]
    return tuple(parts[: len(block)]) == tuple(block)


@dataclasses.dataclass(frozen=True)
class _Block:
    """One block's equations in the target's jaxpr, its one input and one output."""

    eqns: tuple
    input: Any
    output: Any
    nonneg: bool


def _block_io(jaxpr: jcore.Jaxpr, params: set, block: ModulePath) -> _Block | str:
    """The block's equations with one computed input and one output, or why not."""
    inside = [e for e in jaxpr.eqns if _in_block(e, block)]
    if not inside:
        return "not one call site in the target's jaxpr"
    defined = {v for e in inside for v in e.outvars}
    read = [
        v
        for e in inside
        for v in e.invars
        if isinstance(v, jcore.Var) and not isinstance(v, jcore.Literal)
    ]
    inputs = list(dict.fromkeys(v for v in read if v not in defined and v not in params))
    used_after = {
        v
        for e in jaxpr.eqns
        if not _in_block(e, block)
        for v in e.invars
        if isinstance(v, jcore.Var) and not isinstance(v, jcore.Literal)
    } | {v for v in jaxpr.outvars if not isinstance(v, jcore.Literal)}
    outputs = [v for v in dict.fromkeys(defined) if v in used_after]
    if len(inputs) != 1 or len(outputs) != 1:
        return f"{len(inputs)} inputs and {len(outputs)} outputs, not one of each"
    x, y = inputs[0], outputs[0]
    if getattr(x.aval, "shape", None) != getattr(y.aval, "shape", None):
        return "its output's shape differs from its input's"
    return _Block(tuple(inside), x, y, _nonneg(jaxpr, x))


def _is_identity(
    jaxpr: jcore.Jaxpr, block: _Block, param_vars: Mapping[TensorKey, Any], zeroed: set
) -> bool:
    env: dict[Any, int] = {v: (_ZERO if k in zeroed else _OTHER) for k, v in param_vars.items()}
    env[block.input] = _SAME_NONNEG if block.nonneg else _SAME
    _run(jaxpr, env, block.eqns)
    return env.get(block.output, _OTHER) in (_SAME, _SAME_NONNEG)


def _param_keys(layer: Layer) -> tuple[TensorKey, ...]:
    return tuple(tensor_key("params", layer.path, name) for name in layer.tensors.get("params", {}))


def identity_layers(
    jaxpr: jcore.Jaxpr,
    keys: Sequence[TensorKey],
    block: ModulePath,
    layers: Sequence[Layer],
    max_branches: int = 2,
) -> tuple[tuple[TensorKey, ...], str]:
    """Finds the parameters whose zero makes a block an identity.

    Args:
      jaxpr: the target's jaxpr (:func:`dpiat_jax.channels.apply_jaxpr`).
      keys: the variable keys of its first inputs.
      block: the block's module path.
      layers: the block's layers, in call order.
      max_branches: the most layers zeroed together (one per residual branch).

    Returns:
      ``(zeroed keys, "")`` for a residual block (the ``params`` of one layer, or of
      ``max_branches`` at most, the latest layers first), or ``((), reason)``.

    >>> import flax.linen as nn
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from dpiat_jax.channels import apply_jaxpr
    >>> from dpiat_jax.layers import Layer
    >>> class Block(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         return x + nn.Dense(3, name="fc2")(nn.relu(nn.Dense(3, name="fc1")(x)))
    >>> class Net(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         return Block(name="b1")(Block(name="b0")(x))
    >>> x = jnp.zeros((1, 3))
    >>> variables = jax.eval_shape(Net().init, jax.random.key(0), x)
    >>> jaxpr, keys = apply_jaxpr(Net(), variables, x)
    >>> layers = [Layer(("b1", n), "dense", "Dense", {"params": variables["params"]["b1"][n]},
    ...                 "kernel") for n in ("fc1", "fc2")]
    >>> identity_layers(jaxpr, keys, ("b1",), layers)
    ((('params', 'b1', 'fc2', 'bias'), ('params', 'b1', 'fc2', 'kernel')), '')
    """
    params = dict(zip(keys, jaxpr.invars))
    io = _block_io(jaxpr, set(params.values()), block)
    if isinstance(io, str):
        return (), io
    candidates = [layer for layer in layers if _param_keys(layer)][::-1]
    for size in range(1, max_branches + 1):
        for chosen in itertools.combinations(candidates, size):
            zeroed = tuple(k for layer in chosen for k in _param_keys(layer))
            if _is_identity(jaxpr, io, params, set(zeroed)):
                return zeroed, ""
    return (), "not residual: no layer whose zero makes it an identity"


def plan_deepening(
    pairs: Sequence[LayerPair],
    dst_blocks: list,
    module: nn.Module | None,
    variables: Variables,
    sample_input: ArrayTree,
    call_kwargs: Mapping[str, Any] | None = None,
) -> Deepening:
    """Plans ``deepen="identity"``: the later blocks of every run become identities.

    Args:
      pairs: the matched layer pairs.
      dst_blocks: the target's block tree.
      module: the target's linen module (None for an NNX target: every later block of
        a run is kept, as its jaxpr is not traced).
      variables: the target's variables (``jax.ShapeDtypeStruct`` leaves suffice).
      sample_input: the target's input; call_kwargs: its call keywords.

    Returns:
      The :class:`Deepening`: identity blocks and the blocks kept, with reasons.

    >>> import flax.linen as nn
    >>> import jax.numpy as jnp
    >>> plan_deepening([], [], nn.Dense(2), {}, jnp.zeros((1, 3)))
    Deepening(identity=(), kept=())
    """
    runs = seed_runs(pairs, dst_blocks)
    if not runs:
        return Deepening()
    traced: tuple | str
    if module is None:
        traced = "an NNX target's jaxpr is not traced"
    else:
        try:
            traced = apply_jaxpr(
                module, variables, *positional(sample_input), **dict(call_kwargs or {})
            )
        except Exception as err:  # noqa: BLE001 - every block is then kept, with the reason
            traced = f"the target could not be traced ({type(err).__name__})"
    identity, kept = [], []
    for run in runs:
        for node, source in run[1:]:
            layers = _layers(node)
            path = _common_prefix([layer.path[:-1] for layer in layers])
            name = "/".join(path)
            if isinstance(traced, str) or not path:
                kept.append((name, traced if path else "its layers share no module"))
                continue
            if any(layer.stack is not None for layer in layers):
                kept.append((name, "a stacked (scanned) block"))
                continue
            zeroed, reason = identity_layers(*traced, path, layers)
            if zeroed:
                identity.append(IdentityBlock(name, source, zeroed))
            else:
                kept.append((name, reason))
    return Deepening(tuple(identity), tuple(kept))


def zero_tensors(flat: Mapping[TensorKey, Any], keys: Sequence[TensorKey]) -> dict:
    """Returns ``flat`` with the tensors at ``keys`` set to zeros (pure, jittable).

    Args:
      flat: flattened variables.
      keys: the keys to zero.

    Returns:
      A new dict.

    >>> zero_tensors({("params", "w"): jnp.ones(2)}, [("params", "w")])[("params", "w")]
    Array([0., 0.], dtype=float32)
    """
    out = dict(flat)
    for key in keys:
        out[key] = jnp.zeros_like(out[key])
    return out
