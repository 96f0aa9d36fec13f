"""Random Flax architectures for fuzzing transfers (tests, NAS experiments).

:func:`random_architecture` draws a linen module from a small grammar of network parts:

- convolutions (1x1 or 3x3, sometimes strided, grouped or depthwise), dense layers;
- norms: BatchNorm (driven by the model's ``train`` flag), LayerNorm, GroupNorm, RMSNorm;
- residual blocks (a 1x1 projection on the shortcut when the body changes the shape),
  plain nested blocks (submodules containing submodules, often repeated identically
  as in real networks), multi-head self-attention over the image's pixels as tokens;
- placeholders: Dropout and parameter-free custom modules (activations, pooling);
  plain function calls (``nn.relu``) that leave no module behind;
- pseudo-layers: a module owning a ``self.param`` beside its submodules (a positional
  embedding or a layer scale), and custom parametrised leaf modules;
- a dense layer called twice (weight sharing); submodules defined in ``setup`` as lists
  and called in another order than defined (up to twelve, so ``dense_10`` sorts
  before ``dense_2``);
- some layers with ``bfloat16`` parameters;
- linen transforms and combinators: a block under ``nn.remat`` (:class:`RematOp`), an
  ``nn.Sequential`` of dense layers and activations (:class:`SequentialOp`), a stack of
  identical steps run by ``nn.scan`` (:class:`ScanOp`: variables stacked on a leading
  layer axis, as MaxText's ``scan_layers``) and an ``nn.vmap`` ensemble of small
  members averaged (:class:`VmapOp`);
- real-world patterns: a fused projection, one dense layer whose output is cut into two
  or three equal parts that are combined again (:class:`FusedOp`: ``q * k + v``,
  ``silu(gate) * up``), and a token embedding table looked up by quantised activations
  (:class:`EmbedOp`: its rows keep their index in a transfer).

An architecture is described by an :class:`ArchConfig`, a frozen (hashable) dataclass
tree of operations, held by the :class:`RandomNet` module as its one field; the config
also fixes the input shape (``(1, H, W, C)`` with ``H = W`` in 8 or 16, so inits are
fast). Every operation adapts to the shape it receives (groups, projections), so any
sequence of operations is a valid network, which :func:`mutate` uses to derive related
architectures (wider, deeper, a layer more or less), the pairs that transfers meet in
practice.

Example::

    from dpiat_jax import testing
    src, dst = testing.random_architecture(0), testing.random_architecture(1)
    x = testing.random_input(src)  # both take the same input when made with
    # testing.random_architecture(1, input_shape=src.config.input_shape)

:func:`deep_model` builds a large synthetic model (thousands of small layers in nested
blocks) for scale tests.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Callable, Sequence
from typing import Any, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import unfreeze

from dpiat_jax.types import ArrayTree, PRNGKey, Shape

__all__ = [
    "ConvOp",
    "DenseOp",
    "NormOp",
    "DropoutOp",
    "FnOp",
    "AttentionOp",
    "BlockOp",
    "ResidualOp",
    "ParamOp",
    "TiedOp",
    "SetupOp",
    "RematOp",
    "SequentialOp",
    "ScanOp",
    "VmapOp",
    "FusedOp",
    "EmbedOp",
    "ArchConfig",
    "RandomNet",
    "ScanStep",
    "INITS",
    "fast_init",
    "output_shape",
    "random_config",
    "random_architecture",
    "random_input",
    "random_variables",
    "mutate",
    "num_layers",
    "DeepNet",
    "deep_model",
]

WIDTHS = (4, 8, 12, 16, 24, 32, 48, 64)
FUNCTIONS = ("relu", "gelu", "silu", "tanh", "avg_pool", "max_pool", "identity")
NORMS = ("batch", "layer", "group", "rms")
INITS = ("flax", "fast")


# ----------------------------------------------------------------------------------
# The grammar: operations as frozen dataclasses.


@dataclasses.dataclass(frozen=True)
class ConvOp:
    """A 2D convolution (``SAME`` padding). ``depthwise`` uses one group per input
    channel (and as many output channels); otherwise the feature group count is
    ``gcd(groups, in_channels, features)``.

    Example:
        >>> num_layers(ArchConfig((1, 8, 8, 3), (ConvOp(8, kernel=1),)))  # conv + classifier
        2
    """

    features: int
    kernel: int = 3
    strides: int = 1
    groups: int = 1
    depthwise: bool = False
    use_bias: bool = True
    param_dtype: str = "float32"


@dataclasses.dataclass(frozen=True)
class DenseOp:
    """A dense layer on the channel axis.

    Example:
        >>> num_layers(ArchConfig((1, 8, 8, 3), (DenseOp(4), NormOp("layer")), num_classes=0))
        2
    """

    features: int
    use_bias: bool = True
    param_dtype: str = "float32"


@dataclasses.dataclass(frozen=True)
class NormOp:
    """A norm: ``"batch"`` (running statistics unless training), ``"layer"``,
    ``"group"`` (``gcd(groups, channels)`` groups) or ``"rms"``.

    Example:
        >>> NormOp("group", groups=2).kind in NORMS
        True
    """

    kind: str
    groups: int = 4


@dataclasses.dataclass(frozen=True)
class DropoutOp:
    """A Dropout module (a placeholder: no parameters).

    Example:
        >>> config = ArchConfig((1, 8, 8, 3), (DropoutOp(0.2), FnOp("relu")), num_classes=3)
        >>> num_layers(config)  # the placeholders have no parameters: the classifier only
        1
    """

    rate: float = 0.1


@dataclasses.dataclass(frozen=True)
class FnOp:
    """A parameter-free function (see ``FUNCTIONS``): a :class:`Fn` module (a
    placeholder) when ``as_module``, else a plain call that leaves no module.

    Example:
        >>> FnOp("gelu", as_module=False).fn in FUNCTIONS
        True
    """

    fn: str
    as_module: bool = True


@dataclasses.dataclass(frozen=True)
class AttentionOp:
    """Self-attention over the ``H * W`` pixels as tokens, added to its input.
    ``wrapped`` puts it in its own :class:`TokenMixer` module.

    Example:
        >>> num_layers(ArchConfig((1, 8, 8, 3), (AttentionOp(),), num_classes=0))  # q, k, v, out
        4
    """

    num_heads: int = 2
    head_dim: int = 4
    wrapped: bool = False


@dataclasses.dataclass(frozen=True)
class BlockOp:
    """A nested :class:`Block` module running ``body`` in order.

    Example:
        >>> num_layers(ArchConfig((1, 8, 8, 3), (BlockOp((DenseOp(4), DenseOp(4))),), 0))
        2
    """

    body: tuple = ()


@dataclasses.dataclass(frozen=True)
class ResidualOp:
    """A :class:`Residual` module: ``body(x) + shortcut(x)``; the shortcut is a 1x1
    conv (with a norm when ``shortcut_norm``) whenever the body changes the shape.

    Example:
        >>> body = (ConvOp(8), NormOp("batch"), ResidualOp((ConvOp(8), DropoutOp())))
        >>> num_layers(ArchConfig((1, 8, 8, 3), body, num_classes=0))  # with a projection
        5
    """

    body: tuple = ()
    shortcut_norm: str | None = "batch"
    shortcut_first: bool = False


@dataclasses.dataclass(frozen=True)
class ParamOp:
    """A :class:`ParamOwner` module with a ``self.param`` beside its body's submodules:
    ``"pos"`` (an embedding added before the body) or ``"scale"`` (a per-channel scale
    after it). With an empty body it is a custom parametrised leaf layer.

    Example:
        >>> num_layers(ArchConfig((1, 8, 8, 3), (ParamOp((), "scale"),), num_classes=0))
        1
    """

    body: tuple = ()
    kind: str = "scale"


@dataclasses.dataclass(frozen=True)
class TiedOp:
    """One dense layer (as many features as its input has channels) called twice:
    weight sharing.

    Example:
        >>> num_layers(ArchConfig((1, 8, 8, 3), (TiedOp(),), num_classes=0))  # one layer
        1
    """

    use_bias: bool = True


@dataclasses.dataclass(frozen=True)
class SetupOp:
    """A :class:`SetupStack` module: (Dense, LayerNorm) pairs defined in ``setup`` as
    lists and called in list order, or in reverse when ``reverse`` (call order then
    differs from definition order; with ten or more, ``dense_10`` sorts before
    ``dense_2``).

    Example:
        >>> num_layers(ArchConfig((1, 8, 8, 3), (SetupOp((8, 4)),), num_classes=0))
        4
    """

    features: tuple = (8,)
    reverse: bool = False


@dataclasses.dataclass(frozen=True)
class RematOp:
    """A nested :class:`Block` under ``nn.remat`` (rematerialised in the backward pass;
    the module is named ``CheckpointBlock_<n>``).

    Example:
        >>> num_layers(ArchConfig((1, 8, 8, 3), (RematOp((DenseOp(4), NormOp("rms"))),), 0))
        2
    """

    body: tuple = ()


@dataclasses.dataclass(frozen=True)
class SequentialOp:
    """An ``nn.Sequential`` of dense layers (``features``), each followed by an
    activation; the dense layers belong to the calling module.

    Example:
        >>> num_layers(ArchConfig((1, 8, 8, 3), (SequentialOp((8, 4)),), num_classes=0))
        2
    """

    features: tuple = (8,)
    activation: str = "relu"


@dataclasses.dataclass(frozen=True)
class ScanOp:
    """``length`` identical steps of ``body`` run by ``nn.scan`` (``variable_axes``
    ``{"params": 0}``, ``split_rngs`` ``{"params": True}``): every variable of the step
    is stacked on a leading layer axis. A step maps its input to the same shape (the
    carry): :class:`ScanStep` projects back to the input's channels when the body
    changes them. The body must keep the spatial size and create ``params`` only (no
    BatchNorm, Dropout or pooling); :func:`mutate` widens it but never edits its
    structure, and changes ``length``.

    Example:
        >>> # 3 steps of a dense layer and a possible projection back to 3 channels
        >>> num_layers(ArchConfig((1, 8, 8, 3), (ScanOp((DenseOp(4),), 3),), 0))
        6
    """

    body: tuple = ()
    length: int = 2


@dataclasses.dataclass(frozen=True)
class VmapOp:
    """An ensemble: ``members`` copies of a :class:`Block` of ``body`` under ``nn.vmap``
    (``variable_axes`` ``{"params": 0}``, ``in_axes`` None, ``out_axes`` 0), averaged
    over the members. The body creates ``params`` only (dense and conv layers, norms
    without statistics); :func:`mutate` widens it and changes ``members``.

    Example:
        >>> num_layers(ArchConfig((1, 8, 8, 3), (VmapOp((ConvOp(4), DenseOp(4)), 3),), 0))
        2
    """

    body: tuple = ()
    members: int = 2


@dataclasses.dataclass(frozen=True)
class FusedOp:
    """A fused projection: one dense layer of ``parts * features`` outputs cut into
    ``parts`` equal parts (``jnp.split``, or equal slices when ``slices``) that are
    combined again: ``q * k + v`` for three parts, else ``silu(gate) * up`` (``up`` the
    sum of the parts after the first). Gives ``features`` channels.

    Example:
        >>> num_layers(ArchConfig((1, 8, 8, 3), (FusedOp(4, parts=3),), num_classes=0))
        1
    """

    features: int
    parts: int = 3
    slices: bool = False


@dataclasses.dataclass(frozen=True)
class EmbedOp:
    """A token embedding: an ``nn.Embed`` table of ``vocab`` rows (as wide as the input's
    channels) looked up by the quantised first channel and added to the input.

    Example:
        >>> num_layers(ArchConfig((1, 8, 8, 3), (EmbedOp(16),), num_classes=0))
        1
    """

    vocab: int = 16


Op = Union[  # noqa: UP007 - a runtime alias
    ConvOp,
    DenseOp,
    NormOp,
    DropoutOp,
    FnOp,
    AttentionOp,
    TiedOp,
    SetupOp,
    SequentialOp,
    BlockOp,
    ResidualOp,
    ParamOp,
    RematOp,
    ScanOp,
    VmapOp,
    FusedOp,
    EmbedOp,
]
STACKED = (ScanOp, VmapOp)  # containers whose body a lifted transform stacks
CONTAINERS = (BlockOp, ResidualOp, ParamOp, RematOp, *STACKED)


@dataclasses.dataclass(frozen=True)
class ArchConfig:
    """A whole architecture: its input shape ``(N, H, W, C)``, the operations of its
    body and the classifier (global mean pooling and a dense layer; none when
    ``num_classes`` is 0), and its layers' ``initializers`` (see ``INITS``): ``"flax"``,
    the layers' own (random, from the init's key), or ``"fast"``, :func:`fast_init`'s
    fixed values, which compile many times faster (the structure is the same).

    Example:
        >>> config = ArchConfig((1, 8, 8, 3), (ConvOp(8), NormOp("batch")), num_classes=10)
        >>> config == ArchConfig((1, 8, 8, 3), (ConvOp(8), NormOp("batch")))  # by value
        True
    """

    input_shape: tuple[int, ...]
    body: tuple = ()
    num_classes: int = 10
    initializers: str = "flax"


# ----------------------------------------------------------------------------------
# The modules.


def _dtype(name: str) -> Any:
    return jnp.dtype(name)


def _pool(kind: str, x: jax.Array) -> jax.Array:
    window = min(2, x.shape[1], x.shape[2])
    pool = nn.avg_pool if kind == "avg_pool" else nn.max_pool
    return pool(x, (window, window), strides=(window, window))


def _function(name: str, x: jax.Array) -> jax.Array:
    if name in ("avg_pool", "max_pool"):
        return _pool(name, x)
    if name == "identity":
        return x
    return getattr(nn, name)(x)


class Fn(nn.Module):
    """A parameter-free module applying a function of ``FUNCTIONS``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> Fn("max_pool").apply({}, jnp.ones((1, 4, 4, 2))).shape
        (1, 2, 2, 2)
    """

    fn: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _function(self.fn, x)


def fast_init(seed: int, scale: float = 0.5) -> Callable[..., jax.Array]:
    """Return an initializer of fixed pseudo-random values that ignores its key.

    The values are drawn on the host by NumPy from ``seed`` (uniform over
    ``[-scale, scale)``), so a compiled init holds them as constants. A flax initializer
    that draws from its key makes the compiled init derive one key per variable
    (``fold_in`` chains) and generate the values on the device, which dominates compile
    time on CPU; with this one an init compiles some twenty times faster, which is what
    lets the random-architecture fuzz run hundreds of pairs
    (``ArchConfig(initializers="fast")``).

    Args:
      seed: distinguishes layers of the same shape.
      scale: half the width of the value range.

    Returns:
      A function ``(key, shape, dtype=float32) -> array``, as ``flax.linen.initializers``.

    Example:
        >>> import jax
        >>> init = fast_init(1)
        >>> a = init(jax.random.key(0), (2, 3))
        >>> bool((a == init(jax.random.key(5), (2, 3))).all()), bool((abs(a) <= 0.5).all())
        (True, True)
    """

    def init(key: PRNGKey, shape: Shape, dtype: Any = jnp.float32) -> jax.Array:
        del key  # the point: no key derivation to compile
        values = np.random.default_rng(seed).uniform(-scale, scale, tuple(shape))
        return jnp.asarray(values.astype(jnp.dtype(dtype)))  # converted on the host

    return init


@dataclasses.dataclass(frozen=True)
class _Context:
    """What every operation of a body needs: the mode, the initializers, and where it
    is (the calling module's path and the operation's position, which seeds
    :func:`fast_init`)."""

    train: bool
    initializers: str
    where: str

    def at(self, i: int) -> _Context:
        return dataclasses.replace(self, where=f"{self.where}/{i}")

    def inits(self, *names: str) -> dict[str, Callable[..., jax.Array]]:
        """``{name: fast initializer}`` for "fast", else ``{}`` (flax's defaults)."""
        if self.initializers == "flax":
            return {}
        if self.initializers != "fast":
            raise ValueError(f"Unknown initializers {self.initializers!r}; use one of {INITS}.")
        return {n: fast_init(zlib.crc32(f"{self.where}:{n}".encode())) for n in names}


def _context(module: nn.Module, train: bool, initializers: str) -> _Context:
    return _Context(train, initializers, "/".join(module.scope.path))


def _norm(op: NormOp, channels: int, train: bool) -> nn.Module:
    if op.kind == "batch":
        return nn.BatchNorm(use_running_average=not train)
    if op.kind == "layer":
        return nn.LayerNorm()
    if op.kind == "group":
        return nn.GroupNorm(num_groups=math.gcd(max(op.groups, 1), channels))
    if op.kind == "rms":
        return nn.RMSNorm()
    raise ValueError(f"Unknown norm kind {op.kind!r}; use one of {NORMS}.")


def _attention(op: AttentionOp, x: jax.Array, ctx: _Context) -> jax.Array:
    n, h, w, c = x.shape
    tokens = x.reshape(n, h * w, c)
    y = nn.MultiHeadDotProductAttention(
        num_heads=op.num_heads,
        qkv_features=op.num_heads * op.head_dim,
        **ctx.inits("kernel_init", "out_kernel_init"),
    )(tokens)
    return x + y.reshape(x.shape)


class TokenMixer(nn.Module):
    """Self-attention over pixels as its own module (see :class:`AttentionOp`).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> variables = TokenMixer(AttentionOp()).init(jax.random.key(0), jnp.ones((1, 2, 2, 4)))
        >>> sorted(variables["params"])
        ['MultiHeadDotProductAttention_0']
    """

    op: AttentionOp
    initializers: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _attention(self.op, x, _context(self, False, self.initializers))


def _conv(op: ConvOp, x: jax.Array, ctx: _Context) -> jax.Array:
    c = x.shape[-1]
    if op.depthwise:
        groups, features = c, c
    else:
        groups, features = math.gcd(max(op.groups, 1), c, op.features), op.features
    return nn.Conv(
        features,
        (op.kernel, op.kernel),
        strides=(op.strides, op.strides),
        feature_group_count=groups,
        use_bias=op.use_bias,
        param_dtype=_dtype(op.param_dtype),
        **ctx.inits("kernel_init"),
    )(x)


def _sequential(op: SequentialOp, x: jax.Array, ctx: _Context) -> jax.Array:
    layers: list[Callable[[jax.Array], jax.Array]] = []
    for i, f in enumerate(op.features):
        layers += [nn.Dense(f, **ctx.at(i).inits("kernel_init")), getattr(nn, op.activation)]
    return nn.Sequential(layers)(x)


def _fused(op: FusedOp, x: jax.Array, ctx: _Context) -> jax.Array:
    fused = nn.Dense(op.parts * op.features, **ctx.inits("kernel_init"))(x)
    if op.slices:
        f = op.features
        pieces = [fused[..., i * f : (i + 1) * f] for i in range(op.parts)]
    else:
        pieces = jnp.split(fused, op.parts, axis=-1)
    if op.parts == 3:
        q, k, v = pieces
        return q * k + v
    gate, up = pieces[0], pieces[1:]
    return nn.silu(gate) * sum(up)


def _embed(op: EmbedOp, x: jax.Array, ctx: _Context) -> jax.Array:
    tokens = (jnp.abs(x[..., 0]) * 8).astype(jnp.int32) % op.vocab
    table = nn.Embed(op.vocab, x.shape[-1], **ctx.inits("embedding_init"))
    return x + table(tokens).astype(x.dtype)


def _scan(op: ScanOp, x: jax.Array, initializers: str) -> jax.Array:
    scan = nn.scan(
        ScanStep,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        length=op.length,
    )
    return scan(op.body, initializers)(x, None)[0]


def _vmap(op: VmapOp, x: jax.Array, initializers: str) -> jax.Array:
    members = nn.vmap(
        Block,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=None,
        out_axes=0,
        axis_size=op.members,
    )
    return members(op.body, initializers)(x).mean(axis=0)


def _apply(op: Op, x: jax.Array, ctx: _Context) -> jax.Array:
    """Runs one operation; must be called inside a compact method (submodules created
    here belong to the calling module)."""
    c, train, inits = x.shape[-1], ctx.train, ctx.initializers
    if isinstance(op, ConvOp):
        return _conv(op, x, ctx)
    if isinstance(op, DenseOp):
        dtype, inits = _dtype(op.param_dtype), ctx.inits("kernel_init")
        return nn.Dense(op.features, use_bias=op.use_bias, param_dtype=dtype, **inits)(x)
    if isinstance(op, NormOp):
        return _norm(op, c, train)(x)
    if isinstance(op, DropoutOp):
        return nn.Dropout(op.rate, deterministic=not train)(x)
    if isinstance(op, FnOp):
        return Fn(op.fn)(x) if op.as_module else _function(op.fn, x)
    if isinstance(op, AttentionOp):
        return TokenMixer(op, inits)(x) if op.wrapped else _attention(op, x, ctx)
    if isinstance(op, TiedOp):
        dense = nn.Dense(c, use_bias=op.use_bias, **ctx.inits("kernel_init"))
        return dense(nn.relu(dense(x)))
    if isinstance(op, SetupOp):
        return SetupStack(op.features, op.reverse, inits)(x)
    if isinstance(op, SequentialOp):
        return _sequential(op, x, ctx)
    if isinstance(op, FusedOp):
        return _fused(op, x, ctx)
    if isinstance(op, EmbedOp):
        return _embed(op, x, ctx)
    if isinstance(op, ScanOp):
        return _scan(op, x, inits)
    if isinstance(op, VmapOp):
        return _vmap(op, x, inits)
    if isinstance(op, BlockOp):
        return Block(op.body, inits)(x, train)
    if isinstance(op, RematOp):  # ``train`` (argument 2, after self and x) stays static
        return nn.remat(Block, static_argnums=(2,))(op.body, inits)(x, train)
    if isinstance(op, ResidualOp):
        return Residual(op.body, op.shortcut_norm, op.shortcut_first, inits)(x, train)
    if isinstance(op, ParamOp):
        return ParamOwner(op.body, op.kind, inits)(x, train)
    raise TypeError(f"Unknown operation {op!r}.")


def _apply_all(ops: Sequence[Op], x: jax.Array, ctx: _Context) -> jax.Array:
    for i, op in enumerate(ops):
        x = _apply(op, x, ctx.at(i))
    return x


class SetupStack(nn.Module):
    """(Dense, LayerNorm) pairs created in ``setup``; see :class:`SetupOp`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> variables = SetupStack((8, 4)).init(jax.random.key(0), jnp.ones((1, 3)))
        >>> sorted(variables["params"])
        ['dense_0', 'dense_1', 'norm_0', 'norm_1']
    """

    features: tuple
    reverse: bool = False
    initializers: str = "flax"

    def setup(self) -> None:
        ctx = _context(self, False, self.initializers)
        features = enumerate(self.features)
        self.dense = [nn.Dense(f, **ctx.at(i).inits("kernel_init")) for i, f in features]
        self.norm = [nn.LayerNorm() for _ in self.features]

    def __call__(self, x: jax.Array) -> jax.Array:
        order = range(len(self.features))
        for i in reversed(order) if self.reverse else order:
            x = self.norm[i](self.dense[i](x))
        return x


class Block(nn.Module):
    """A nested block: its operations in order.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> block = Block((DenseOp(4), NormOp("layer")))
        >>> sorted(block.init(jax.random.key(0), jnp.ones((1, 2, 2, 3)))["params"])
        ['Dense_0', 'LayerNorm_0']
    """

    body: tuple
    initializers: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return _apply_all(self.body, x, _context(self, train, self.initializers))


class ScanStep(nn.Module):
    """One step of a :class:`ScanOp`: ``body``, then a dense projection (``proj``) back
    to the input's channels when the body changes them, so that the carry keeps its
    shape. Called as ``(carry, unused) -> (carry, None)``, as ``nn.scan`` wants.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> step = ScanStep((DenseOp(4),))
        >>> variables = step.init(jax.random.key(0), jnp.ones((1, 2, 2, 3)), None)
        >>> sorted(variables["params"])
        ['Dense_0', 'proj']
    """

    body: tuple
    initializers: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array, unused: None = None) -> tuple[jax.Array, None]:
        del unused
        ctx = _context(self, False, self.initializers)
        y = _apply_all(self.body, x, ctx)
        if y.shape[-1] != x.shape[-1]:
            inits = ctx.at(-1).inits("kernel_init")
            y = nn.Dense(x.shape[-1], name="proj", **inits)(y)
        return y, None


class Residual(nn.Module):
    """``body(x) + shortcut(x)``; see :class:`ResidualOp`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> variables = Residual((ConvOp(8),)).init(jax.random.key(0), jnp.ones((1, 4, 4, 3)))
        >>> sorted(variables["params"])  # the body's conv, the projection and its norm
        ['BatchNorm_0', 'Conv_0', 'Conv_1']
    """

    body: tuple
    shortcut_norm: str | None = "batch"
    shortcut_first: bool = False
    initializers: str = "flax"

    def _shortcut(self, x: jax.Array, out_shape: tuple, ctx: _Context) -> jax.Array:
        if tuple(x.shape) == tuple(out_shape):
            return x
        stride = max(1, x.shape[1] // out_shape[1])
        inits = ctx.at(-1).inits("kernel_init")
        x = nn.Conv(out_shape[-1], (1, 1), strides=(stride, stride), use_bias=False, **inits)(x)
        if self.shortcut_norm:
            x = _norm(NormOp(self.shortcut_norm), out_shape[-1], ctx.train)(x)
        return x

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        ctx = _context(self, train, self.initializers)
        if self.shortcut_first:  # the shortcut's layers come first in call order
            channels, size = output_shape(BlockOp(self.body), x.shape[-1], x.shape[1])
            shortcut = self._shortcut(x, (x.shape[0], size, size, channels), ctx)
            return _apply_all(self.body, x, ctx) + shortcut
        y = _apply_all(self.body, x, ctx)
        return y + self._shortcut(x, y.shape, ctx)


class ParamOwner(nn.Module):
    """A module owning a parameter beside its submodules (see :class:`ParamOp`).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> owner = ParamOwner((DenseOp(4),), "scale")
        >>> sorted(owner.init(jax.random.key(0), jnp.ones((1, 2, 2, 3)))["params"])
        ['Dense_0', 'gamma']
    """

    body: tuple
    kind: str = "scale"
    initializers: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        ctx = _context(self, train, self.initializers)
        if self.kind == "pos":
            init = ctx.inits("pos").get("pos", nn.initializers.normal(0.02))
            pos = self.param("pos_embedding", init, x.shape[1:])
            return _apply_all(self.body, x + pos, ctx)
        y = _apply_all(self.body, x, ctx)
        gamma = self.param("gamma", nn.initializers.constant(0.1), (y.shape[-1],))
        return y * gamma


class RandomNet(nn.Module):
    """A network described by an :class:`ArchConfig` (``train`` drives BatchNorm and
    Dropout).

    Example:
        >>> import jax
        >>> net = RandomNet(ArchConfig((1, 4, 4, 3), (ConvOp(4), NormOp("batch")), num_classes=2))
        >>> variables = net.init(jax.random.key(0), random_input(net))
        >>> net.apply(variables, random_input(net, batch=3)).shape
        (3, 2)
    """

    config: ArchConfig

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        ctx = _context(self, train, self.config.initializers)
        x = _apply_all(self.config.body, x, ctx)
        if self.config.num_classes:
            inits = ctx.at(-1).inits("kernel_init")
            x = nn.Dense(self.config.num_classes, **inits)(x.mean(axis=(1, 2)))
        return x


# ----------------------------------------------------------------------------------
# Drawing configurations.


def _generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


@dataclasses.dataclass
class _State:
    channels: int
    size: int  # H = W
    budget: int  # parametrised layers still allowed


class _Drawer:
    def __init__(self, rng, max_depth, max_width, max_len, max_layers, widths=None, pool=True):
        self.rng = rng
        self.pool = pool
        self.max_depth = max_depth
        self.max_len = max_len
        widths = WIDTHS if widths is None else tuple(int(w) for w in widths)
        self.widths = [w for w in widths if w <= max_width] or [max(1, max_width)]
        self.budget = max_layers

    def width(self, current: int) -> int:
        if current in self.widths and self.rng.random() < 0.4:
            return current
        return int(self.rng.choice(self.widths))

    def conv(self, s: _State, pool: bool) -> ConvOp:
        r = self.rng
        strides = 2 if pool and s.size >= 4 and r.random() < 0.15 else 1
        kernel = int(r.choice([1, 3]))
        dtype = "bfloat16" if r.random() < 0.08 else "float32"
        if s.channels > 1 and r.random() < 0.15:
            op = ConvOp(s.channels, 3, strides, depthwise=True, param_dtype=dtype)
        else:
            features = self.width(s.channels)
            groups = 1
            if r.random() < 0.12:
                groups = int(r.choice([2, 4]))
            use_bias = bool(r.random() < 0.7)
            op = ConvOp(features, kernel, strides, groups, False, use_bias, dtype)
            s.channels = features
        s.size = -(-s.size // strides)
        s.budget -= 1
        return op

    def dense(self, s: _State) -> DenseOp:
        features = self.width(s.channels)
        dtype = "bfloat16" if self.rng.random() < 0.08 else "float32"
        s.channels = features
        s.budget -= 1
        return DenseOp(features, bool(self.rng.random() < 0.8), dtype)

    def fused(self, s: _State) -> FusedOp:
        r = self.rng
        op = FusedOp(self.width(s.channels), int(r.choice([2, 3])), bool(r.random() < 0.3))
        s.channels = op.features
        s.budget -= 1
        return op

    def function(self, s: _State, pool: bool) -> FnOp:
        fn = str(self.rng.choice([f for f in FUNCTIONS if pool or not f.endswith("_pool")]))
        if fn in ("avg_pool", "max_pool"):
            s.size = max(1, s.size // 2) if s.size >= 2 else s.size
        return FnOp(fn, bool(self.rng.random() < 0.6))

    def leaf(self, s: _State) -> Op:
        r = self.rng
        kinds = ["conv", "dense", "norm", "dropout", "fn", "attention", "param_leaf", "tied"]
        kinds += ["setup", "sequential", "fused", "embed"]
        weights = [30, 8, 22, 5, 12, 4, 3, 3, 2, 3, 3, 2]
        kind = r.choice(kinds, p=np.array(weights) / sum(weights))
        if kind in ("conv", "dense", "fused", "fn"):
            return self.plain(s, str(kind), self.pool)
        if kind == "norm":
            s.budget -= 1
            return NormOp(str(r.choice(NORMS)), int(r.choice([1, 2, 4, 8])))
        if kind == "dropout":
            return DropoutOp(float(r.choice([0.0, 0.1, 0.5])))
        if kind == "attention":
            s.budget -= 4
            heads = int(r.choice([1, 2, 4]))
            return AttentionOp(heads, int(r.choice([2, 4, 8])), bool(r.random() < 0.5))
        if kind == "tied":
            s.budget -= 1
            return TiedOp(bool(r.random() < 0.7))
        if kind == "embed":
            s.budget -= 1
            return EmbedOp(int(r.choice([16, 32, 50])))
        if kind == "setup":
            n = int(r.choice([2, 3, 12]))
            features = tuple(self.width(s.channels) for _ in range(n))
            op = SetupOp(features, bool(r.random() < 0.5))
            s.channels = output_shape(op, s.channels, s.size)[0]
            s.budget -= 2 * n
            return op
        if kind == "sequential":
            features = tuple(self.width(s.channels) for _ in range(int(r.integers(1, 4))))
            activation = str(r.choice(["relu", "gelu", "tanh"]))
            s.channels = features[-1]
            s.budget -= len(features)
            return SequentialOp(features, activation)
        s.budget -= 1
        return ParamOp((), "scale")

    def plain(self, s: _State, kind: str, pool: bool = False) -> Op:
        """A layer that creates ``params`` only (what a lifted transform's body may
        hold); it keeps the spatial size unless ``pool``."""
        if kind == "conv":
            return self.conv(s, pool)
        if kind == "dense":
            return self.dense(s)
        if kind == "fused":
            return self.fused(s)
        if kind == "fn":
            return self.function(s, pool)
        if kind == "norm":
            s.budget -= 1
            return NormOp(str(self.rng.choice(["layer", "group", "rms"])), 2)
        s.budget -= 1
        return ParamOp((), "scale")

    def stacked(self, s: _State, kind: str) -> Op:
        """A :class:`ScanOp` (its steps keep the shape) or a :class:`VmapOp`."""
        r = self.rng
        if kind == "scan":
            kinds, weights, n = ["conv", "dense", "norm", "fn", "param", "fused"], [4] * 6, 4
        else:
            kinds, weights, n = ["conv", "dense", "fn"], [4, 4, 1], 2
        state = _State(s.channels, s.size, s.budget)
        p = np.array(weights) / sum(weights)
        body = tuple(
            self.plain(state, str(r.choice(kinds, p=p))) for _ in range(int(r.integers(1, n)))
        )
        if kind == "scan":
            op: Op = ScanOp(body, int(r.choice([2, 3, 4])))
        else:
            op = VmapOp(body, int(r.choice([2, 3])))
            s.channels = state.channels
        s.budget -= _count(op)
        return op

    def container(self, s: _State, depth: int) -> Op:
        r = self.rng
        kinds = ["block", "residual", "param", "remat", "scan", "vmap"]
        kind = r.choice(kinds, p=[0.32, 0.36, 0.12, 0.07, 0.07, 0.06])
        if kind in ("scan", "vmap"):
            return self.stacked(s, str(kind))
        length = int(r.integers(1, self.max_len + 1))
        body = tuple(self.ops(s, depth + 1, length))
        if kind == "block":
            return BlockOp(body)
        if kind == "remat":
            return RematOp(body)
        if kind == "residual":
            norm = r.choice(["batch", "layer", "none"], p=[0.5, 0.2, 0.3])
            return ResidualOp(body, None if norm == "none" else str(norm), bool(r.random() < 0.2))
        return ParamOp(body, str(r.choice(["pos", "scale"])))

    def ops(self, s: _State, depth: int, length: int) -> list[Op]:
        out: list[Op] = []
        while len(out) < length and s.budget > 0:
            if depth < self.max_depth and self.rng.random() < 0.35:
                op = self.container(s, depth)  # leaves ``s`` at the container's output
                out.append(op)
                if self.rng.random() < 0.4:  # identical copies, as in ResNet stages
                    for _ in range(int(self.rng.integers(1, 3))):
                        out.append(op)
                        s.channels, s.size = output_shape(op, s.channels, s.size)
                        s.budget -= _count(op)
            else:
                out.append(self.leaf(s))
        return out


def _count(op: Op) -> int:
    """Parametrised layers an operation creates (attention counts 4; a scan counts
    every step's, a possible projection included; an ensemble its member's)."""
    if isinstance(op, (ConvOp, DenseOp, NormOp, TiedOp, FusedOp, EmbedOp)):
        return 1
    if isinstance(op, SetupOp):
        return 2 * len(op.features)
    if isinstance(op, SequentialOp):
        return len(op.features)
    if isinstance(op, AttentionOp):
        return 4
    if isinstance(op, ScanOp):
        return op.length * (1 + sum(_count(o) for o in op.body))
    if isinstance(op, CONTAINERS):
        own = 1 if isinstance(op, ParamOp) else 0
        extra = 2 if isinstance(op, ResidualOp) else 0  # a possible projection and its norm
        return own + extra + sum(_count(o) for o in op.body)
    return 0


def output_shape(op: Op, channels: int, size: int) -> tuple[int, int]:
    """Return the shape an operation gives, without running it.

    Residual shortcuts built before their body (``shortcut_first``) and the drawer's
    bookkeeping rely on it.

    Args:
      op: an operation of the grammar.
      channels: its input's channel count.
      size: its input's height (= width).

    Returns:
      ``(channels, size)`` of its output.

    Example:
        >>> output_shape(BlockOp((ConvOp(8, strides=2), FnOp("max_pool"))), 3, 16)
        (8, 4)
    """
    if isinstance(op, ConvOp):
        return (channels if op.depthwise else op.features), -(-size // op.strides)
    if isinstance(op, DenseOp):
        return op.features, size
    if isinstance(op, SetupOp):
        return (op.features[0] if op.reverse else op.features[-1]), size
    if isinstance(op, SequentialOp):
        return op.features[-1], size
    if isinstance(op, FusedOp):
        return op.features, size
    if isinstance(op, FnOp) and op.fn in ("avg_pool", "max_pool"):
        return channels, (size // 2 if size >= 2 else size)
    if isinstance(op, ScanOp):  # every step gives its input's shape (the carry)
        return channels, size
    if isinstance(op, CONTAINERS):
        for o in op.body:
            channels, size = output_shape(o, channels, size)
    return channels, size


def num_layers(config: ArchConfig | RandomNet) -> int:
    """Return an upper bound on the parametrised layers of an architecture.

    A residual counts a possible projection; attention counts its four projections; a
    scan counts every step's layers (they are unstacked into one layer per step), an
    ensemble its member's (its members are parallel copies of one layer).

    Args:
        config: the architecture, or the module that holds it.

    Returns:
        The number of layers with parameters, the classifier included.

    Example:
        >>> num_layers(ArchConfig((1, 8, 8, 3), (ConvOp(8), DropoutOp(), DenseOp(4))))
        3
    """
    config = config.config if isinstance(config, RandomNet) else config
    return sum(_count(op) for op in config.body) + (1 if config.num_classes else 0)


def random_config(
    rng: np.random.Generator | int | None = None,
    *,
    max_depth: int = 3,
    max_width: int = 32,
    max_len: int = 6,
    max_layers: int = 40,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
    widths: Sequence[int] | None = None,
    downsample: bool = True,
    initializers: str = "flax",
) -> ArchConfig:
    """Draw an :class:`ArchConfig` (see the module docstring for the grammar).

    Args:
      rng: a NumPy generator or a seed.
      max_depth: the deepest nesting of blocks (1: no nested modules besides
        attention's own).
      max_width: the largest channel count a layer is given.
      max_len: the most operations in one block's body.
      max_layers: roughly the most parametrised layers (keeps inits fast).
      input_shape: ``(N, H, W, C)``; drawn (``H = W`` in 8 or 16, ``C`` in 1, 3, 4,
        ``N = 1``) when None. Give two draws the same one to make a transfer pair.
      num_classes: the classifier's outputs (0: no classifier); drawn when None.
      widths: the channel counts layers are drawn from (``WIDTHS`` when None), those
        up to ``max_width``; a small set keeps the distinct tensor shapes few (eager
        inits compile once per shape).
      downsample: whether strided convs and pooling may shrink the image.
      initializers: ``"flax"`` or ``"fast"`` (see :class:`ArchConfig`); draws nothing.

    Returns:
      The drawn config; the same ``rng`` seed draws the same config.

    Example:
        >>> config = random_config(0)
        >>> config.input_shape, config == random_config(0)
        ((1, 16, 16, 3), True)
    """
    r = _generator(rng)
    if input_shape is None:
        size = int(r.choice([8, 16]))
        input_shape = (1, size, size, int(r.choice([1, 3, 4])))
    if num_classes is None:
        num_classes = int(r.choice([0, 10, 10, 100]))
    drawer = _Drawer(r, max_depth, max_width, max_len, max_layers, widths, downsample)
    state = _State(input_shape[-1], input_shape[1], max_layers)
    body: list[Op] = []
    if r.random() < 0.7:  # a stem, as most networks have
        body.append(ConvOp(drawer.width(16), 3, 1, use_bias=False))
        state.channels = body[-1].features
        if r.random() < 0.7:
            body.append(NormOp(str(r.choice(["batch", "layer", "group"]))))
        state.budget -= len(body)
    body.extend(drawer.ops(state, 1, int(r.integers(2, 2 * max_len + 1))))
    if not any(_count(op) for op in body) and not num_classes:
        body.append(DenseOp(drawer.width(8)))  # at least one layer with parameters
    if initializers not in INITS:
        raise ValueError(f"Unknown initializers {initializers!r}; use one of {INITS}.")
    return ArchConfig(tuple(input_shape), tuple(body), num_classes, initializers)


def random_architecture(
    rng: np.random.Generator | int | None = None,
    *,
    max_depth: int = 3,
    max_width: int = 32,
    max_len: int = 6,
    max_layers: int = 40,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
    widths: Sequence[int] | None = None,
    downsample: bool = True,
    initializers: str = "flax",
) -> RandomNet:
    """Draw a random architecture: a :class:`RandomNet` of :func:`random_config`'s config.

    The ``config`` (an :class:`ArchConfig`) also fixes the input shape (see
    :func:`random_input`).

    Args:
      rng: a NumPy generator or a seed.
      max_depth: as for :func:`random_config`.
      max_width: as for :func:`random_config`.
      max_len: as for :func:`random_config`.
      max_layers: as for :func:`random_config`.
      input_shape: as for :func:`random_config`.
      num_classes: as for :func:`random_config`.
      widths: as for :func:`random_config`.
      downsample: as for :func:`random_config`.
      initializers: as for :func:`random_config`.

    Returns:
      An unbound :class:`RandomNet`.

    Example:
        >>> net = random_architecture(0)
        >>> net.config == random_config(0)
        True
    """
    return RandomNet(
        random_config(
            rng,
            max_depth=max_depth,
            max_width=max_width,
            max_len=max_len,
            max_layers=max_layers,
            input_shape=input_shape,
            num_classes=num_classes,
            widths=widths,
            downsample=downsample,
            initializers=initializers,
        )
    )


def random_input(
    module_or_config: RandomNet | ArchConfig,
    rng: np.random.Generator | int | None = None,
    *,
    batch: int | None = None,
) -> jax.Array:
    """Return an input batch for a generated architecture.

    Args:
      module_or_config: a :class:`RandomNet` or its :class:`ArchConfig`.
      rng: a NumPy generator or a seed for standard normal values; zeros when None.
      batch: overrides the config's batch size.

    Returns:
      A float32 array of the config's input shape.

    Example:
        >>> random_input(random_architecture(0), batch=2).shape
        (2, 16, 16, 3)
    """
    config = getattr(module_or_config, "config", module_or_config)
    shape = tuple(config.input_shape)
    if batch is not None:
        shape = (batch, *shape[1:])
    if rng is None:
        return jnp.zeros(shape, jnp.float32)
    return jnp.asarray(_generator(rng).standard_normal(shape), jnp.float32)


def random_variables(
    module: nn.Module,
    sample_input: ArrayTree,
    rng: np.random.Generator | int | None = None,
    **call_kwargs: Any,
) -> dict:
    """Return variables shaped as ``module.init``'s, every value drawn afresh.

    Values are standard normal (batch variances positive), so that a transferred tensor
    is told apart from a fresh one. Costs an abstract init only.

    Args:
      module: the linen module.
      sample_input: an input batch for ``module.init``.
      rng: a NumPy generator or a seed.
      **call_kwargs: passed to ``module.init``.

    Returns:
      The variables dict (the structure, shapes and dtypes of ``module.init``).

    Example:
        >>> net = RandomNet(ArchConfig((1, 4, 4, 3), (ConvOp(4), NormOp("batch")), 2))
        >>> variables = random_variables(net, random_input(net), rng=0)
        >>> sorted(variables), sorted(variables["params"])
        (['batch_stats', 'params'], ['BatchNorm_0', 'Conv_0', 'Dense_0'])
    """
    abstract = jax.eval_shape(
        module.init,
        {"params": jax.random.key(0), "dropout": jax.random.key(1)},
        sample_input,
        **call_kwargs,
    )
    r = _generator(rng)

    def fill(path, leaf):
        values = r.standard_normal(leaf.shape)
        if path and getattr(path[-1], "key", None) == "var":
            values = np.abs(values) + 0.1
        return jax.device_put(values.astype(leaf.dtype))  # no conversion to compile

    return jax.tree_util.tree_map_with_path(fill, unfreeze(abstract))


# ----------------------------------------------------------------------------------
# Related architectures.


def _map_ops(ops: tuple, fn: Callable[[Op], Op]) -> tuple:
    out = []
    for op in ops:
        if isinstance(op, CONTAINERS):
            op = dataclasses.replace(op, body=_map_ops(op.body, fn))
        out.append(fn(op))
    return tuple(out)


def _body_paths(ops: tuple, path: tuple = ()) -> list[tuple]:
    """Index paths of every body (``()``: the top level) in the operation tree whose
    structure an edit may change (not the bodies of stacked transforms: a scan's step
    must keep its shape and create ``params`` only)."""
    out = [path]
    for i, op in enumerate(ops):
        if isinstance(op, CONTAINERS) and not isinstance(op, STACKED):
            out.extend(_body_paths(op.body, path + (i,)))
    return out


def _stacked_paths(ops: tuple, path: tuple = ()) -> list[tuple]:
    """Index paths of every :class:`ScanOp` and :class:`VmapOp`."""
    out = []
    for i, op in enumerate(ops):
        if isinstance(op, STACKED):
            out.append(path + (i,))
        elif isinstance(op, CONTAINERS):
            out.extend(_stacked_paths(op.body, path + (i,)))
    return out


def _edit(ops: tuple, path: tuple, fn: Callable[[tuple], tuple]) -> tuple:
    if not path:
        return tuple(fn(ops))
    i, rest = path[0], path[1:]
    op = ops[i]
    new = dataclasses.replace(op, body=_edit(op.body, rest, fn))
    return ops[:i] + (new,) + ops[i + 1 :]


def _at(ops: tuple, path: tuple) -> tuple:
    for i in path:
        ops = ops[i].body
    return ops


def _scaled(op: Op, factor: float) -> Op:
    """An operation with its widths (a vocabulary's size) scaled by ``factor``."""
    if isinstance(op, (ConvOp, DenseOp)) and not getattr(op, "depthwise", False):
        return dataclasses.replace(op, features=max(1, int(op.features * factor)))
    if isinstance(op, FusedOp):
        return dataclasses.replace(op, features=max(1, int(op.features * factor)))
    if isinstance(op, EmbedOp):
        return dataclasses.replace(op, vocab=max(2, int(op.vocab * factor)))
    if isinstance(op, (SetupOp, SequentialOp)):
        return dataclasses.replace(op, features=tuple(max(1, int(f * factor)) for f in op.features))
    return op


def _relength(body: tuple, r: np.random.Generator) -> tuple:
    """``body`` with one scan's length (or one ensemble's member count) redrawn."""
    paths = _stacked_paths(body)
    path = paths[int(r.integers(len(paths)))]
    field = "length" if isinstance(_at(body, path[:-1])[path[-1]], ScanOp) else "members"
    size = int(r.integers(1, 6))

    def replace(b: tuple, i: int = path[-1]) -> tuple:
        return b[:i] + (dataclasses.replace(b[i], **{field: size}),) + b[i + 1 :]

    return _edit(body, path[:-1], replace)


def _mutated(body: tuple, r: np.random.Generator) -> tuple:
    """``body`` after one random edit (see :func:`mutate`)."""
    edits = ["widen", "narrow", "deepen", "delete", "insert", "kernel"]
    edit = r.choice(edits + (["length"] if _stacked_paths(body) else []))
    paths = _body_paths(body)
    path = paths[int(r.integers(len(paths)))]
    length = len(_at(body, path))
    if edit in ("widen", "narrow"):
        factor = 2.0 if edit == "widen" else 0.5
        return _map_ops(body, lambda op: _scaled(op, factor))
    if edit == "deepen" and length:
        i = int(r.integers(length))
        return _edit(body, path, lambda b: b[: i + 1] + b[i:])
    if edit == "delete" and length > 1:
        i = int(r.integers(length))
        return _edit(body, path, lambda b: b[:i] + b[i + 1 :])
    if edit == "insert":
        i = int(r.integers(length + 1))
        op = _Drawer(r, 0, 32, 1, 1 << 30).leaf(_State(8, 8, 1 << 30))
        return _edit(body, path, lambda b: b[:i] + (op,) + b[i:])
    if edit == "kernel":

        def flip(op: Op) -> Op:
            if isinstance(op, ConvOp) and not op.depthwise and r.random() < 0.5:
                return dataclasses.replace(op, kernel=4 - op.kernel)
            return op

        return _map_ops(body, flip)
    if edit == "length":
        return _relength(body, r)
    return body


def mutate(
    config: ArchConfig | RandomNet, rng: np.random.Generator | int | None = None, steps: int = 1
) -> ArchConfig | RandomNet:
    """Return a related architecture: ``steps`` random edits of ``config``.

    Each edit widens or narrows every conv/dense layer (and fused projection and
    vocabulary), repeats an element of a body (deeper), deletes one, inserts a random
    layer, flips a kernel size, or (when there is one) redraws a scan's length or an
    ensemble's member count. The bodies of scans and ensembles are widened and their
    kernels flipped, but their structure is never edited.

    Args:
      config: a config or a :class:`RandomNet`.
      rng: a NumPy generator or a seed.
      steps: the number of edits.

    Returns:
      The type it was given (a config or a module); the input shape never changes.

    Example:
        >>> config = random_config(0)
        >>> mutate(config, 0).input_shape == config.input_shape
        True
    """
    if isinstance(config, RandomNet):
        return RandomNet(mutate(config.config, rng, steps))
    r = _generator(rng)
    body = config.body
    for _ in range(steps):
        body = _mutated(body, r)
    return dataclasses.replace(config, body=body)


# ----------------------------------------------------------------------------------
# A large synthetic model for scale tests.


class _DeepBlock(nn.Module):
    width: int
    layers: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for _ in range(self.layers):
            x = nn.LayerNorm()(nn.Dense(self.width)(x))
        return x


class _DeepStage(nn.Module):
    width: int
    blocks: int
    layers: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for _ in range(self.blocks):
            x = _DeepBlock(self.width, self.layers)(x)
        return x


class DeepNet(nn.Module):
    """Stages (one per width) of identical blocks of ``layers`` (Dense, LayerNorm)
    pairs: ``2 * len(widths) * blocks * layers`` layers, plus a classifier.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> net = DeepNet((8, 4), blocks=1, layers=2)
        >>> net.apply(net.init(jax.random.key(0), jnp.ones((1, 16))), jnp.ones((1, 16))).shape
        (1, 10)
    """

    widths: tuple[int, ...]
    blocks: int = 10
    layers: int = 5
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for w in self.widths:
            x = _DeepStage(w, self.blocks, self.layers)(x)
        return nn.Dense(self.num_classes)(x)


def deep_model(
    num_layers: int,
    *,
    stages: int = 8,
    layers_per_block: int = 5,
    rng: np.random.Generator | int | None = 0,
    max_width: int = 32,
) -> tuple[DeepNet, jax.Array]:
    """Return a :class:`DeepNet` of about ``num_layers`` small layers and its input.

    Args:
      num_layers: the approximate number of layers (in nested blocks).
      stages: the number of stages (one width each).
      layers_per_block: (Dense, LayerNorm) pairs per block.
      rng: a NumPy generator or a seed for the stage widths.
      max_width: the largest stage width.

    Returns:
      ``(model, sample_input)``; the input is zeros of shape ``(1, 16)``.

    Example:
        >>> model, x = deep_model(200, stages=2)
        >>> model.blocks, x.shape
        (10, (1, 16))
    """
    r = _generator(rng)
    blocks = max(1, round(num_layers / (2 * stages * layers_per_block)))
    widths = tuple(int(w) for w in r.choice([w for w in WIDTHS if w <= max_width], stages))
    return DeepNet(widths, blocks, layers_per_block), jnp.zeros((1, 16), jnp.float32)
