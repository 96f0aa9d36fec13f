"""Layer discovery of linen modules that does not depend on interceptors firing.

Issue 12: a module defining ``__getattr__`` sent the call interceptor into endless
recursion, and a module whose ``__call__`` is wrapped in ``nn.jit`` was seen whole on
the first init of a process and as one root pseudo-layer after (a cache hit of
``nn.jit`` runs no Python, so no interceptor fires).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from dpiat_jax.layers import ModuleCall, layers
from dpiat_jax.trace.linen import (
    UntracedModuleWarning,
    complete_calls,
    module_attrs,
    record_calls,
    record_init,
    trace,
    unrecorded_paths,
)

X = jax.ShapeDtypeStruct((2, 3), jnp.float32)
HERE = os.path.dirname(__file__)


@dataclasses.dataclass(frozen=True)
class Sizes:
    width: int = 4
    depth: int = 2


def summary(root) -> list[tuple[str, str, list]]:
    """(name, kind, sorted tensor shapes) of every layer, a comparable description."""
    out = []
    for layer in layers(root):
        shapes = sorted(
            [c, n, list(t.shape)] for c, g in layer.tensors.items() for n, t in g.items()
        )
        out.append((layer.name, layer.kind, shapes))
    return out


def call_summary(calls) -> list[tuple]:
    return [(c.path, c.module_type.__name__) for c in calls]


# ---------------------------------------------------------------------------------
# __getattr__


class Forwarding(nn.Module):
    """Forwards every attribute it lacks to its config (as Gemma's Transformer does
    for ``vision_encoder``)."""

    sizes: Sizes

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.sizes, name)

    @nn.compact
    def __call__(self, x):
        for _ in range(self.depth):  # through __getattr__
            x = nn.Dense(self.width)(x)
        return x


class Raising(nn.Module):
    """A ``__getattr__`` that must never be run by the probe."""

    def __getattr__(self, name):
        raise RuntimeError(f"__getattr__ called for {name}")

    @nn.compact
    def __call__(self, x):
        return nn.Conv(4, (1,), feature_group_count=1)(x)


class SetupForwarding(nn.Module):
    """Setup-defined children and a ``__getattr__`` that falls back to linen's."""

    sizes: Sizes

    def setup(self):
        self.blocks = [nn.Dense(self.sizes.width) for _ in range(self.sizes.depth)]
        self.norm = nn.LayerNorm()

    def __getattr__(self, name):
        if name == "vision_encoder":
            return None
        return super().__getattr__(name)

    def __call__(self, x):
        assert self.vision_encoder is None
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def test_getattr_forwarding_module_traces():
    root, _ = trace(Forwarding(Sizes()), None, (X,), {})
    assert [(x.name, x.kind) for x in layers(root)] == [
        ("Dense_0", "dense"),
        ("Dense_1", "dense"),
    ]


def test_getattr_setup_module_traces():
    root, _ = trace(SetupForwarding(Sizes(width=5, depth=3)), None, (X,), {})
    assert [(x.name, x.kind) for x in layers(root)] == [
        ("blocks_0", "dense"),
        ("blocks_1", "dense"),
        ("blocks_2", "dense"),
        ("norm", "layer_norm"),
    ]


def test_probe_never_runs_user_getattr():
    assert module_attrs(Raising()) == {"feature_group_count": None}
    x = jax.ShapeDtypeStruct((1, 5, 2), jnp.float32)
    root, _ = trace(Raising(), None, (x,), {})
    assert [(x.name, x.kind) for x in layers(root)] == [("Conv_0", "conv1d")]


# ---------------------------------------------------------------------------------
# nn.jit


def jitted_model():
    """A fresh class (a fresh nn.jit cache) with a jitted ``__call__``."""

    class JitRoot(nn.Module):
        @functools.partial(nn.jit, static_argnames=("self",))
        @nn.compact
        def __call__(self, x):
            x = nn.Dense(4)(x)
            x = nn.LayerNorm()(x)
            return nn.Dense(2)(x)

    return JitRoot()


def test_nn_jit_root_recorded_alike_before_and_after_an_init():
    model = jitted_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first, calls_first = record_init(model, (X,), {})
        model.init(jax.random.key(0), jnp.zeros(X.shape))  # the user's own init
        # the situation: a plain record now misses every submodule (nn.jit cache hit)
        abstract, plain = record_calls(jax.eval_shape, model.init, jax.random.key(0), X)
        assert unrecorded_paths(plain, abstract)
        again, calls_again = record_init(model, (X,), {})
    assert call_summary(calls_again) == call_summary(calls_first)
    assert [c.path for c in calls_first] == [(), ("Dense_0",), ("LayerNorm_0",), ("Dense_1",)]
    assert jax.tree.map(lambda a: a.shape, again) == jax.tree.map(lambda a: a.shape, first)


class JitBlock(nn.Module):
    """Identical blocks share one nn.jit trace (the name is not in its cache key)."""

    width: int

    @functools.partial(nn.jit, static_argnames=("self",))
    @nn.compact
    def __call__(self, x):
        return nn.LayerNorm()(nn.Dense(self.width)(x))


class TwinBlocks(nn.Module):
    @nn.compact
    def __call__(self, x):
        for i in range(3):
            x = JitBlock(4, name=f"block_{i}")(x)
        return x


def test_nn_jit_twin_blocks_all_recorded():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        root, _ = trace(TwinBlocks(), None, (X,), {})
    assert [(x.name, x.kind) for x in layers(root)] == [
        (f"block_{i}/{name}", kind)
        for i in range(3)
        for name, kind in (("Dense_0", "dense"), ("LayerNorm_0", "layer_norm"))
    ]
    assert [node.type_name for node in root.children] == ["JitBlock"] * 3


SUBPROCESS = """
import json, sys, jax
sys.path.insert(0, {here!r})
from compat.gemma_like import Config, Transformer, tokens
from dpiat_jax.layers import layers
from dpiat_jax.trace.linen import trace
x = tokens()
root, _ = trace(Transformer(Config()), None, (jax.ShapeDtypeStruct(x.shape, x.dtype),), {{}})
print(json.dumps([
    (l.name, l.kind, sorted([c, n, list(t.shape)] for c, g in l.tensors.items()
                            for n, t in g.items()))
    for l in layers(root)
]))
"""


def test_gemma_like_hierarchy_same_in_a_fresh_process_and_after_inits():
    from compat.gemma_like import Config, Transformer, tokens

    x = tokens()
    model = Transformer(Config())
    model.init(jax.random.key(0), x)  # warms nn.jit's cache in this process
    spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        here = summary(build_root(model, spec))
        again = summary(build_root(model, spec))
    out = subprocess.run(
        [sys.executable, "-c", SUBPROCESS.format(here=HERE)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    fresh = [tuple(x) for x in json.loads(out.stdout.strip().splitlines()[-1])]
    assert here == again == fresh
    assert len(fresh) == 2 + 6 * 2  # embedder, final norm, 6 layers per block
    assert {kind for _, kind, _ in fresh} == {"Embedder", "Einsum", "FeedForward", "RMSNorm"}


def build_root(model, spec):
    """A hierarchy from an uncached record (``trace`` caches by configuration)."""
    from dpiat_jax.layers import build_hierarchy

    abstract, calls = record_init(model, (spec,), {})
    return build_hierarchy(calls, abstract)


# ---------------------------------------------------------------------------------
# modules never seen called: rebuilt from the variable tree


class Inner(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.a = nnx.Linear(3, 4, rngs=rngs)
        self.b = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.b(self.a(x))


class Bridged(nn.Module):
    """An NNX module inside a linen one: linen's interceptors never see its parts."""

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(3)(x)
        return nnx.bridge.to_linen(Inner)(x)


def test_unseen_modules_rebuilt_from_the_variable_tree():
    with pytest.warns(UntracedModuleWarning, match="ToLinen_0/a, ToLinen_0/b"):
        abstract, calls = record_init(Bridged(), (X,), {})
    from dpiat_jax.layers import build_hierarchy

    root = build_hierarchy(calls, abstract)
    got = [(x.name, x.kind, sorted(x.tensors["params"])) for x in layers(root)]
    assert got == [
        ("Dense_0", "dense", ["bias", "kernel"]),
        ("ToLinen_0/a", "Module", ["bias", "kernel"]),
        ("ToLinen_0/b", "Module", ["bias", "kernel"]),
    ]
    assert not unrecorded_paths(calls, abstract)


def test_unrecorded_paths_and_complete_calls():
    z = jnp.zeros((2, 2))
    variables = {
        "params": {"a": {"kernel": z}, "b": {"c": {"kernel": z}, "d": {"kernel": z}}},
        "batch_stats": {"b": {"c": {"mean": z}}},
    }
    calls = [ModuleCall((), nn.Module, {}), ModuleCall(("a",), nn.Dense, {})]
    assert unrecorded_paths(calls, variables) == [("b",), ("b", "c"), ("b", "d")]
    with pytest.warns(UntracedModuleWarning, match="3 module"):
        done = complete_calls(calls, variables)
    assert [c.path for c in done] == [(), ("a",), ("b",), ("b", "c"), ("b", "d")]
    assert done[:2] == calls
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert complete_calls(done, variables) == done
    # every recorded module owns its variables: nothing missing
    full = [*calls, ModuleCall(("b",), nn.Module, {}), ModuleCall(("b", "c"), nn.Dense, {})]
    assert unrecorded_paths(full, variables) == [("b", "d")]


# ---------------------------------------------------------------------------------
# local shapes (nn.scan / nn.vmap detection) stay recorded


class SetupBlock(nn.Module):
    def setup(self):
        self.dense = nn.Dense(4)

    def __call__(self, x):
        return self.dense(x)


class HasSetupBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        return SetupBlock(name="block")(x)


def test_local_shapes_after_the_first_real_call():
    _, calls = record_calls(jax.eval_shape, HasSetupBlock().init, jax.random.key(0), X)
    by_path = {c.path: c for c in calls}
    # taken after __call__, not after setup (when the child has no variables yet)
    assert by_path[("block",)].local == {
        ("params", "dense", "bias"): (4,),
        ("params", "dense", "kernel"): (3, 4),
    }
    assert by_path[("block", "dense")].local == {
        ("params", "bias"): (4,),
        ("params", "kernel"): (3, 4),
    }
    assert not any(c.batched for c in calls)


def test_local_shapes_inside_nn_scan_and_vmap():
    class Body(nn.Module):
        @nn.compact
        def __call__(self, x, _):
            return nn.Dense(3)(x), None

    class Scanned(nn.Module):
        @nn.compact
        def __call__(self, x):
            scan = nn.scan(Body, variable_axes={"params": 0}, split_rngs={"params": True}, length=5)
            return scan(name="layers")(x, None)[0]

    class Ensemble(nn.Module):
        @nn.compact
        def __call__(self, x):
            vmap = nn.vmap(
                nn.Dense,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=None,
                axis_size=2,
            )
            return vmap(3, name="members")(x)

    _, calls = record_calls(jax.eval_shape, Scanned().init, jax.random.key(0), X)
    layer = {c.path: c for c in calls}[("layers", "Dense_0")]
    assert layer.local[("params", "kernel")] == (3, 3) and not layer.batched
    _, calls = record_calls(jax.eval_shape, Ensemble().init, jax.random.key(0), X)
    member = {c.path: c for c in calls}[("members",)]
    assert member.local[("params", "kernel")] == (3, 3) and member.batched
