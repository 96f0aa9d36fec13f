"""Transfers between random architectures drawn by :mod:`dpiat_jax.testing`.

Every pair must transfer without error, give exactly the structure, shapes and dtypes of
the target's fresh init, move matched tensors by the clip rule and leave every other
tensor at its fresh value, be deterministic, have a similarity in [0, 1], and reproduce
the source exactly when both sides are the same architecture.

The draws mix linen transforms (``nn.scan`` stacks, ``nn.vmap`` ensembles, ``nn.remat``,
``nn.Sequential``), fused projections, weight tying and token embeddings. The clip rule's
reference is written out here from the plan's moves: a stacked tensor moves step by step
(``TensorMove.src_index`` / ``dst_index``: the steps the layers' labels ``[i]`` name), a
fused one part by part (``parts``), a token table from row 0 (``prefix_axes``); every
move must belong to a reported pair, and a pair of plain layers must move exactly the
tensors both own with equal ranks. Hand-made pairs (``CRAFTED``) cover what draws meet
rarely: flax's initializers on ensembles, scan <-> unrolled, one model <-> an ensemble.

The default run checks 200 pairs (and 16 hand-made ones). With nothing cached, on two
CPU cores shared with other jobs (load average 2-4), the 200 pairs took 2.3 CPU-minutes
and the whole file 3.5-3.8 (user + sys; wall 3.5-4 minutes); the pairs cost about what
they did before scans, ensembles and fused projections were drawn. More on request
(the seed, the number of pairs, wide draws)::

    DPIAT_RANDOM_PAIRS=5000 python -m pytest -q -p no:xdist tests/test_random_architectures.py
    DPIAT_RANDOM_SEED=7 DPIAT_RANDOM_WIDE=1 python -m pytest tests/test_random_architectures.py

What keeps a pair cheap (compilation dominates; the transfer itself takes microseconds):

- ``ArchConfig(initializers="fast")``: the layers' initializers ignore the key and
  hand fixed NumPy values to the compiled init as constants
  (:func:`dpiat_jax.testing.fast_init`), so it neither derives per-variable keys nor
  generates random numbers, which are most of its compile time on CPU. Every
  ``FLAX_EVERY``-th pair (smaller) keeps flax's own initializers (random, from the
  key), alternately with ``rbg`` keys and with the default ``threefry`` ones.
- One compiled program per pair: the transfer and the target's fresh init run inside
  one ``jax.jit`` (``transfer`` plans from the tracers' shapes), where XLA merges the
  fresh init with the transfer's own; determinism is then checked on the plan (equal
  JSON twice), which fixes the program. Every ``EAGER_EVERY``-th pair calls
  ``transfer`` eagerly instead, as most users do: twice, compared value by value, and
  its result must own its buffers.
- Alignments run under ``kernel_policy("numpy")`` (the same recurrence, never
  compiled), except every ``KERNEL_EVERY``-th pair, under ``"jit"`` (the compiled
  kernel; tests/test_alignment.py checks both against the reference).
- Small models: up to about 12 parametrised layers (nested up to three deep), widths
  from a small set and one input shape (``DPIAT_RANDOM_WIDE=1`` draws up to 40 layers
  from the full ranges of widths and inputs).

The times above are with nothing cached. The module also opts in to JAX's persistent
compilation cache (``dpiat_jax.enable_compilation_cache``), which spares recompiling the
alignment kernel and the deep-model test on a second run; the pairs' programs are small
and tracing and planning remain, so a second run of the pairs is barely faster.
"""

from __future__ import annotations

import functools
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from oracle import reference_clip

import dpiat_jax
from dpiat_jax import testing
from dpiat_jax.alignment import kernel_policy
from dpiat_jax.tensors import resize_positional

_CACHE_SETTINGS = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
)


@pytest.fixture(scope="module", autouse=True)
def compilation_cache():
    """This file opts in to JAX's persistent compilation cache
    (``dpiat_jax.enable_compilation_cache``, the user's explicit choice) and restores
    JAX's settings afterwards."""
    saved = {name: jax.config.values[name] for name in _CACHE_SETTINGS}
    dpiat_jax.enable_compilation_cache()
    yield
    for name, value in saved.items():
        jax.config.update(name, value)


SEED = int(os.environ.get("DPIAT_RANDOM_SEED", "20250611"))
PAIRS = int(os.environ.get("DPIAT_RANDOM_PAIRS", "200"))
WIDE = os.environ.get("DPIAT_RANDOM_WIDE", "0") not in ("0", "", "false", "no")
# The cadences are prime to the 4 kinds, 3 forms and 5 modes that i % 4, 3, 5 choose,
# so that each special kind of pair meets all of them.
FLAX_EVERY = 47  # pairs 46, 93, ...: flax's initializers (93, 187, ...: threefry keys)
EAGER_EVERY = 7  # pairs 3, 10, 17, ...: transfer called eagerly
KERNEL_EVERY = 97  # pairs 48, 145, ...: the compiled alignment kernel

KINDS = ("identity", "mutated", "independent", "mutated-far")


# ----------------------------------------------------------------------------------
# Helpers.


def flat(tree) -> dict:
    return {tuple(str(k) for k in key): v for key, v in traverse_util.flatten_dict(tree).items()}


def direct(flat_vars: dict, path: tuple[str, ...]) -> dict:
    """(collection, tensor name) -> key for the tensors a module owns directly."""
    return {(k[0], k[-1]): k for k in flat_vars if len(k) == len(path) + 2 and k[1:-1] == path}


def as_path(name: str) -> tuple[str, ...]:
    """A layer name's module path; a step label (``layers[2]``, ``members[*]``) is
    dropped: every step of a stacked module shares its variables' keys."""
    if name == "<root>":
        return ()
    return tuple(part.split("[", 1)[0] for part in name.split("/"))


def step(x: np.ndarray, index: tuple[int, int] | None) -> np.ndarray:
    """One step of a stacked tensor (the tensor itself when ``index`` is None)."""
    return x if index is None else np.take(x, index[1], axis=index[0])


def clip_prefix(src: np.ndarray, dst: np.ndarray, prefix_axes: tuple[int, ...]) -> np.ndarray:
    """The clip rule, with the first ``min(a, b)`` entries of each prefix axis (a token
    table's rows keep their index) moved as they are, and the rule on those only."""
    if not prefix_axes:
        return reference_clip(src, dst)
    keep_src, keep_dst = [slice(None)] * src.ndim, [slice(None)] * dst.ndim
    for axis in prefix_axes:
        n = min(src.shape[axis], dst.shape[axis])
        keep_src[axis] = keep_dst[axis] = slice(0, n)
    out = np.array(dst, copy=True)
    out[tuple(keep_dst)] = reference_clip(src[tuple(keep_src)], dst[tuple(keep_dst)])
    return out


def reference_move(move, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """What the clip rule makes of ``target`` (the whole tensor) for one planned move,
    written out on its own: one step of a stacked source into one step of a stacked
    target (``src_index``, ``dst_index``), a fused tensor part by part (``parts``), a
    token axis from index 0 (``prefix_axes``), a positional table resized first."""
    src, dst = step(source, move.src_index), step(target, move.dst_index)
    assert src.shape == tuple(move.src_shape) and dst.shape == tuple(move.dst_shape), move
    if move.positional:  # the grid resize is tested in tests/test_tensors.py
        src = np.asarray(resize_positional(jnp.asarray(src), move.dst_shape)[0])
    if move.parts is None:
        new = clip_prefix(src, dst, move.prefix_axes)
    else:
        axis, count = move.parts
        pieces = zip(np.split(src, count, axis), np.split(dst, count, axis))
        new = np.concatenate([clip_prefix(a, b, move.prefix_axes) for a, b in pieces], axis)
    if move.keep_first_row:
        first = (slice(None),) * (dst.ndim - 2) + (slice(0, 1),)
        new[first] = dst[first]
    if move.dst_index is None:
        return new
    out = np.array(target, copy=True)
    where = [slice(None)] * out.ndim
    where[move.dst_index[0]] = move.dst_index[1]
    out[tuple(where)] = new
    return out


def expected_values(moves, src_flat: dict, fresh_flat: dict) -> dict:
    """Every target tensor as the clip rule leaves it: the fresh init, with each
    planned move (per step of a stacked tensor, per part of a fused one) applied."""
    expected = {k: np.asarray(v) for k, v in fresh_flat.items()}
    for move in moves:
        expected[move.dst] = reference_move(
            move, np.asarray(src_flat[move.src]), expected[move.dst]
        )
    return expected


def check_moves_agree_with_report(plan, report, src_flat: dict, fresh_flat: dict, info):
    """The plan moves what the report's pairs say: each target layer takes one source;
    every move belongs to a reported pair, a stacked step's move reads and writes the
    steps its layers' labels name, and a pair of plain layers moves exactly the
    tensors both layers own with equal ranks."""
    assert plan.report.pairs == report.pairs, info
    pairs, targets = {(s, d) for s, d, _ in report.pairs}, set()
    for _, d, _ in report.pairs:
        assert d not in targets, (info, f"target {d} received two sources")
        targets.add(d)
    moved: dict[tuple[str, str], set] = {}
    for move in plan.moves:
        assert (move.src_layer, move.dst_layer) in pairs, (info, move)
        moved.setdefault((move.src_layer, move.dst_layer), set()).add(move.dst)
        for name, index in ((move.src_layer, move.src_index), (move.dst_layer, move.dst_index)):
            if index is not None:
                assert f"[{index[1]}]" in name or "[*]" in name, (info, move)
            else:
                assert "[" not in name or "[*]" in name, (info, move)
    for s, d in pairs:
        if "[" in s + d:
            continue
        src_t = direct(src_flat, as_path(s))
        derived = {
            k
            for (c, name), k in direct(fresh_flat, as_path(d)).items()
            if (c, name) in src_t and np.ndim(src_flat[src_t[c, name]]) == np.ndim(fresh_flat[k])
        }
        assert moved.get((s, d), set()) == derived, (info, s, d)


def count_fused(ops: tuple) -> int:
    """The fused projections' modules of a body (a stacked body's count once)."""
    n = 0
    for op in ops:
        if isinstance(op, testing.FusedOp):
            n += 1
        elif isinstance(op, testing.CONTAINERS):
            n += count_fused(op.body)
    return n


def flax_inits(i: int) -> bool:
    return i % FLAX_EVERY == FLAX_EVERY - 1


def eager(i: int) -> bool:
    return i % EAGER_EVERY == 3


def policy(i: int) -> str:
    return "jit" if i % KERNEL_EVERY == KERNEL_EVERY // 2 else "numpy"


def key_for(i: int) -> jax.Array:
    if flax_inits(i) and (i // FLAX_EVERY) % 2:
        return jax.random.key(SEED + i)
    return jax.random.key(SEED + i, impl="rbg")


def draw_pair(i: int):
    """Pair ``i``: ``(kind, src, dst, sample input)``; both take the same input."""
    rng = np.random.default_rng([SEED, i])
    kind = KINDS[i % len(KINDS)]
    if WIDE:
        options = {"max_width": 64, "max_layers": 40}
        shape = None
    else:
        options = {"widths": (4, 8, 16), "max_layers": 12, "num_classes": 10}
        shape = (1, 8, 8, 3)
    if flax_inits(i):  # random inits compile slowly: fewer layers
        options.update(initializers="flax", max_layers=8)
    else:
        options.update(initializers="fast")
    src = testing.random_architecture(rng, input_shape=shape, **options)
    shape = src.config.input_shape
    if kind == "identity":
        dst = testing.RandomNet(src.config)  # an equal config, a separate module
    elif kind == "mutated":
        dst = testing.mutate(src, rng, steps=int(rng.integers(1, 3)))
    elif kind == "mutated-far":
        dst = testing.mutate(src, rng, steps=int(rng.integers(3, 7)))
    else:
        dst = testing.random_architecture(rng, input_shape=shape, **options)
    return kind, src, dst, testing.random_input(src, rng)


def transfer_and_init(jitted: bool, given, src, dst, rng, x, **kw):
    """``(transfer, dst's fresh init)``: one compiled program when ``jitted`` (XLA merges
    the fresh init with the transfer's own), else an eager transfer and a compiled init."""
    call = kw.get("call_kwargs") or {}

    def run(given, rng):
        out = dpiat_jax.transfer(given, src, dst, rng, sample_input=x, **kw)
        return out, dst.init(rng, x, **call)

    if jitted:
        return jax.jit(run)(given, rng)
    out = dpiat_jax.transfer(given, src, dst, rng, sample_input=x, **kw)
    return out, jax.jit(functools.partial(dst.init, **call))(rng, x)


def assert_deterministic(jitted: bool, out, plan, given, src, dst, rng, x, info, **kw) -> None:
    """The same arguments give the same result: compared value by value for an eager
    transfer (a second one), and for a jitted one as the same plan (its JSON: every move,
    the report, the target's variables), which fixes the traced program."""
    if jitted:
        again = dpiat_jax.plan(src, dst, src_variables=given, sample_input=x, rng=rng, **kw)
        assert plan.to_json() == again.to_json(), info
        return
    again = dpiat_jax.transfer(given, src, dst, rng, sample_input=x, **kw)
    assert jax.tree_util.tree_structure(again) == jax.tree_util.tree_structure(out), info
    for k, v in flat(flax.core.unfreeze(again)).items():
        np.testing.assert_array_equal(np.asarray(v), np.asarray(flat(out)[k]), err_msg=info)


def assert_owns_buffers(out, given, info) -> None:
    """An eager transfer's result shares no buffer with the source, nor within itself."""
    mine = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(out)]
    theirs = {x.unsafe_buffer_pointer() for x in jax.tree.leaves(given)}
    assert len(set(mine)) == len(mine), (info, "a buffer appears twice in the result")
    assert not set(mine) & theirs, (info, "the result shares a buffer with the source")


# ----------------------------------------------------------------------------------
# The generator itself.


@pytest.mark.parametrize("seed", range(12))
def test_generator_is_deterministic_hashable_and_runs(seed):
    a = testing.random_architecture(seed)
    b = testing.random_architecture(np.random.default_rng(seed))
    assert a.config == b.config and hash(a.config) == hash(b.config)
    x = testing.random_input(a)
    assert x.shape == a.config.input_shape and x.shape[1] in (8, 16)
    variables = jax.eval_shape(a.init, jax.random.key(0), x)
    assert "params" in variables
    # The predicted output shape of the body is the real one (the generator relies on
    # it for residual shortcuts that are built before their body).
    channels, size = testing.output_shape(testing.BlockOp(a.config.body), x.shape[-1], x.shape[1])
    body = jax.eval_shape(testing.Block(a.config.body).init_with_output, jax.random.key(0), x)[0]
    assert body.shape == (1, size, size, channels)
    m = testing.mutate(a.config, seed, steps=3)
    assert m.input_shape == a.config.input_shape
    jax.eval_shape(testing.RandomNet(m).init, jax.random.key(0), x)


def test_generator_covers_the_grammar():
    """Across a few dozen draws every kind of operation and layer appears."""
    seen_ops, seen_kinds = set(), set()

    def walk(ops):
        for op in ops:
            seen_ops.add(type(op).__name__)
            if isinstance(op, testing.ConvOp):
                seen_ops.add("depthwise" if op.depthwise else f"conv{op.kernel}x{op.kernel}")
                if op.groups > 1 and not op.depthwise:
                    seen_ops.add("grouped")
                if op.param_dtype == "bfloat16":
                    seen_ops.add("bfloat16")
            if isinstance(op, testing.NormOp):
                seen_ops.add(f"norm:{op.kind}")
            if isinstance(op, testing.ParamOp):
                seen_ops.add(f"param:{op.kind}:{bool(op.body)}")
            if isinstance(op, testing.SetupOp) and op.reverse and len(op.features) > 10:
                seen_ops.add("setup:reversed:long")
            if isinstance(op, testing.FusedOp):
                seen_ops.add(f"fused:{op.parts}:{'slices' if op.slices else 'split'}")
                seen_ops.add(f"fused:{op.parts}")
            if isinstance(op, testing.CONTAINERS):
                if any(isinstance(o, testing.CONTAINERS) for o in op.body):
                    seen_ops.add("nested")
                walk(op.body)

    for seed in range(40):
        m = testing.random_architecture(seed)
        walk(m.config.body)
        if seed < 12:
            tree = dpiat_jax.module_blocks(m, sample_input=testing.random_input(m))
            seen_kinds |= {leaf.kind for leaf in _leaves(tree)}
    expected_ops = {
        "ConvOp", "DenseOp", "NormOp", "DropoutOp", "FnOp", "AttentionOp", "BlockOp",
        "ResidualOp", "ParamOp", "conv1x1", "conv3x3", "depthwise", "grouped", "bfloat16",
        "norm:batch", "norm:layer", "norm:group", "norm:rms", "nested",
        "param:scale:False", "param:scale:True", "param:pos:True", "TiedOp", "SetupOp",
        "setup:reversed:long", "RematOp", "SequentialOp", "ScanOp", "VmapOp", "FusedOp",
        "EmbedOp", "fused:2", "fused:3", "fused:2:split", "fused:3:split", "fused:2:slices",
    }  # fmt: skip
    assert expected_ops <= seen_ops, expected_ops - seen_ops
    expected_kinds = {
        "conv2d", "depthwise_conv2d", "dense", "dense_general", "batch_norm", "layer_norm",
        "group_norm", "rms_norm", "none", "own:ParamOwner", "ParamOwner",
    }  # fmt: skip
    assert expected_kinds <= seen_kinds, expected_kinds - seen_kinds


def _leaves(tree):
    for x in tree:
        if isinstance(x, list):
            yield from _leaves(x)
        else:
            yield x


# ----------------------------------------------------------------------------------
# Random pairs.


@pytest.mark.parametrize("i", range(PAIRS))
def test_random_pair(i):
    with kernel_policy(policy(i)):
        check_pair(i)


def check_pair(i: int, drawn: tuple | None = None) -> dpiat_jax.MatchReport:
    """Transfers pair ``i`` (``drawn``: ``(kind, src, dst, sample input)``, else
    :func:`draw_pair`'s), checks every invariant of the module docstring and returns
    the match report."""
    kind, src, dst, x = draw_pair(i) if drawn is None else drawn
    rng = key_for(i)
    src_vars = testing.random_variables(src, x, np.random.default_rng([SEED, i, 1]))
    form = ("variables", "params", "frozen")[i % 3]
    given = {
        "variables": src_vars,
        "params": src_vars["params"],
        "frozen": flax.core.freeze(src_vars),
    }[form]

    # Every fifth pair runs in training mode (BatchNorm batch statistics, live Dropout).
    call = {"train": True} if i % 5 == 4 else {}
    jitted = not eager(i)
    out, fresh = transfer_and_init(jitted, given, src, dst, rng, x, call_kwargs=call)
    kw = {"sample_input": x, "call_kwargs": call}
    report = dpiat_jax.match(given, src, dst, rng, **kw)
    how = "jit" if jitted else "eager"
    info = f"pair {i} ({kind}, {form}, {how}, {call}): {src.config} -> {dst.config}"

    # Deterministic for a given rng; eagerly, buffers of its own.
    plan = dpiat_jax.plan(src, dst, src_variables=given, rng=rng, **kw)
    assert_deterministic(jitted, out, plan, given, src, dst, rng, x, info, call_kwargs=call)
    if not jitted:
        assert_owns_buffers(out, given, info)
    if form == "params":
        fresh = {"params": fresh["params"]}
        out = {"params": out}

    # The exact structure, shapes and dtypes of the fresh init.
    assert isinstance(out, flax.core.FrozenDict) == (form == "frozen"), info
    out = flax.core.unfreeze(out)
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(fresh), info
    got, want = flat(out), flat(fresh)
    for k, v in want.items():
        assert got[k].shape == v.shape and got[k].dtype == v.dtype, (info, k)

    # Matched tensors follow the clip rule (per step of a stacked tensor, per part of a
    # fused one); every other tensor keeps its fresh value.
    src_flat = flat(src_vars)
    check_moves_agree_with_report(plan, report, src_flat, want, info)
    expected = expected_values(plan.moves, src_flat, want)
    for k, v in expected.items():
        np.testing.assert_array_equal(np.asarray(got[k]), v, err_msg=f"{info} at {k}")

    # Similarity in [0, 1]; the report's agrees with similarity().
    sim = dpiat_jax.similarity((src, given), dst, **kw)
    assert -1e-6 <= sim <= 1 + 1e-6, (info, sim)
    assert report.similarity == pytest.approx(sim, rel=1e-6, abs=1e-6), info

    if kind == "identity":
        for k, v in flat(src_vars).items():
            if k[0] == "params" or form != "params":
                np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(v), err_msg=info)
        assert sim == pytest.approx(1.0, abs=1e-6), info
        assert report.layers_transferred == report.layers_total, info
        assert not report.unmatched_dst and not report.unmatched_src, info
        fused = {name for name, _, _ in plan.report.fused}  # both tensors of every one found
        assert len(fused) == 2 * count_fused(dst.config.body), (info, fused)
        if form != "params":  # params only: the source has no batch statistics
            assert not report.skipped, info
    return report


def _net(body: tuple, initializers: str = "flax") -> testing.RandomNet:
    return testing.RandomNet(testing.ArchConfig((1, 8, 8, 3), body, 10, initializers))


_D, _C, _S, _V = testing.DenseOp, testing.ConvOp, testing.ScanOp, testing.VmapOp
_STEP = (_D(8), testing.NormOp("layer"), testing.FnOp("gelu"), _D(8))
_MEMBER = (_C(8, kernel=1), _D(4))
_BOTH, _FLAX, _FAST = ("flax", "fast"), ("flax",), ("fast",)
# Hand-made pairs for what random draws meet rarely: flax's initializers (ensemble
# members are then parallel copies), scan <-> unrolled, one model <-> an ensemble.
# (name, source body, target body (None: the source's), initializers, all seeded?)
CRAFTED = (
    ("identity", (_C(8), _S(_STEP, 3), _V(_MEMBER, 2)), None, _BOTH, True),
    ("scan-deeper", (_C(8), _S(_STEP, 2)), (_C(8), _S(_STEP, 4)), _FAST, True),
    ("scan-shallower", (_C(8), _S(_STEP, 4)), (_C(8), _S(_STEP, 2)), _FLAX, True),
    ("scan-narrower", (_C(8), _S(_STEP, 3)), (_C(4), _S((_D(4), _D(4)), 2)), _FLAX, False),
    ("scan-unrolled", (_C(8), _S(_STEP, 3)), (_C(8), *[testing.BlockOp(_STEP)] * 3), _FAST, True),
    ("unrolled-scan", (_C(8), *[testing.BlockOp(_STEP)] * 2), (_C(8), _S(_STEP, 3)), _FLAX, True),
    ("ensemble-more", (_V(_MEMBER, 2),), (_V(_MEMBER, 3),), _BOTH, True),
    ("single-ensemble", (testing.BlockOp(_MEMBER),), (_V(_MEMBER, 3),), _BOTH, True),
    ("ensemble-single", (_V(_MEMBER, 3),), (testing.BlockOp(_MEMBER),), _BOTH, True),
    (
        "fused-wider",
        (_C(8), testing.FusedOp(8, 3), testing.FusedOp(4, 2, slices=True)),
        (_C(8), testing.FusedOp(16, 3, slices=True), testing.FusedOp(8, 2)),
        _FAST,
        True,
    ),
    ("fused-in-scan", (_S((testing.FusedOp(4, 3),), 2),), None, _FAST, True),
    ("embed-vocab", (_C(8), testing.EmbedOp(16)), (_C(4), testing.EmbedOp(50)), _FAST, True),
)
CRAFTED_RUNS = [(entry, init) for entry in CRAFTED for init in entry[3]]


@pytest.mark.parametrize(
    "j", range(len(CRAFTED_RUNS)), ids=[f"{e[0]}-{init}" for e, init in CRAFTED_RUNS]
)
def test_crafted_pair(j):
    """The invariants on hand-made pairs of scanned, vmapped and fused layers; a depth
    change of a scan, scan <-> unrolled and an ensemble <-> one member seed every target
    layer, and with flax's initializers ensemble members are parallel copies."""
    (name, src_body, dst_body, _, all_seeded), initializers = CRAFTED_RUNS[j]
    src = _net(src_body, initializers)
    dst = src if dst_body is None else _net(dst_body, initializers)
    kind = "identity" if dst_body is None else name
    x = testing.random_input(src, np.random.default_rng([SEED, j]))
    with kernel_policy("numpy"):
        report = check_pair(100_000 + j, (kind, src, dst, x))
    if all_seeded:
        assert report.layers_transferred == report.layers_total, (name, str(report))
    if initializers == "flax":
        members = [n for pair in report.pairs for n in pair[:2] if n.startswith("VmapBlock")]
        assert all("[*]" in n for n in members), (name, report.pairs)


def test_ensemble_members_are_parallel_whatever_the_initializers():
    """An ``nn.vmap`` ensemble is one layer of parallel members (``[*]``) with fixed
    initializers too (zeros, constants), as with random ones."""
    net = _net((testing.VmapOp(_MEMBER, 2),), "fast")
    pairs = dpiat_jax.plan(net, net, sample_input=testing.random_input(net)).report.pairs
    assert pairs and all("[*]" in d for _, d, _ in pairs if d.startswith("VmapBlock")), pairs


def test_scan_to_unrolled_with_two_layer_steps():
    """Scan <-> unrolled aligns step to block whatever the step's size: a scan of
    (Dense, LayerNorm) steps seeds every layer of the same blocks unrolled."""
    step = (_D(8), testing.NormOp("layer"))
    scan = _net((_C(8), _S(step, 3)), "fast")
    unrolled = _net((_C(8), *[testing.BlockOp(step)] * 3), "fast")
    x = testing.random_input(scan)
    report = dpiat_jax.plan(scan, unrolled, sample_input=x).report
    assert report.layers_transferred == report.layers_total, str(report)


MATCHERS = ("dp", "flat", "bipartite", "nested-bipartite", "random")
RULES = ("clip", "magnitude", "full", "uniform")


OTHER_EVERY = 9  # pairs 1, 10, 19, ...: the other matchers and rules too


@pytest.mark.parametrize("j", range(len(range(1, PAIRS, OTHER_EVERY))))
def test_random_pair_other_matchers_and_rules(j):
    """Every matcher and tensor rule keeps the fresh init's structure, shapes and
    dtypes, deterministically, and leaves unmatched layers at their fresh values
    (every ninth pair; twenty cover every matcher and rule combination)."""
    i = 1 + OTHER_EVERY * j
    with kernel_policy(policy(i)):
        check_other_matcher_and_rule(i, j)


def check_other_matcher_and_rule(i: int, j: int) -> None:
    kind, src, dst, x = draw_pair(i)
    matcher, rule = MATCHERS[j % len(MATCHERS)], RULES[j % len(RULES)]
    rng = key_for(i)
    src_vars = testing.random_variables(src, x, np.random.default_rng([SEED, i, 1]))
    kw = {"matcher": matcher, "tensor_rule": rule}
    jitted = matcher != "random" and not eager(i)  # the random matcher plans eagerly
    out, fresh = transfer_and_init(jitted, src_vars, src, dst, rng, x, **kw)
    report = dpiat_jax.match(src_vars, src, dst, rng, sample_input=x, **kw)
    info = f"pair {i} ({kind}, {matcher}, {rule}): {src.config} -> {dst.config}"
    plan = dpiat_jax.plan(src, dst, src_variables=src_vars, sample_input=x, rng=rng, **kw)
    assert_deterministic(jitted, out, plan, src_vars, src, dst, rng, x, info, **kw)
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(fresh), info
    got, want = flat(out), flat(fresh)
    for k, v in want.items():
        assert got[k].shape == v.shape and got[k].dtype == v.dtype, (info, k)
    matched = {as_path(d) for _, d, _ in report.pairs}
    for k, v in want.items():
        if k[1:-1] not in matched:
            np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(v), f"{info} at {k}")


# ----------------------------------------------------------------------------------
# A large model (the benchmark's scale test, smaller).


def test_deep_model_transfer_completes():
    """Several hundred layers on each side (benchmarks/bench_scale.py goes to thousands)."""
    src, x = testing.deep_model(480, stages=4, layers_per_block=5, rng=1)
    dst, _ = testing.deep_model(560, stages=4, layers_per_block=5, rng=2)
    src_vars = testing.random_variables(src, x, 3)
    rng = jax.random.key(4, impl="rbg")
    out = dpiat_jax.transfer(src_vars, src, dst, rng, sample_input=x)
    fresh = jax.eval_shape(dst.init, rng, x)
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(fresh)
    got = flat(out)
    for k, w in flat(fresh).items():
        assert got[k].shape == w.shape and got[k].dtype == w.dtype, k
    assert sum(1 for k in got if k[-1] in ("kernel", "scale")) >= 550
    assert dpiat_jax.similarity((src, src_vars), dst, sample_input=x) > 0.1


def test_rank_sources_agrees_with_similarity():
    """Ranking random candidates gives each one's similarity, best first; the target
    itself among them ranks first with similarity 1."""
    rng = np.random.default_rng([SEED, 10_000])
    shape = (1, 8, 8, 3)
    target = testing.random_architecture(rng, input_shape=shape, widths=(4, 8, 16))
    x = testing.random_input(target)
    modules = [testing.random_architecture(rng, input_shape=shape) for _ in range(3)]
    modules += [testing.mutate(target, rng, steps=2), target]
    candidates = [(m, testing.random_variables(m, x, k)) for k, m in enumerate(modules)]
    ranking = dpiat_jax.rank_sources(candidates, target, sample_input=x)
    assert sorted(i for i, _ in ranking) == list(range(len(candidates)))
    sims = [s for _, s in ranking]
    assert sims == sorted(sims, reverse=True)
    assert ranking[0][1] == pytest.approx(1.0, abs=1e-6)
    assert dict(ranking)[len(candidates) - 1] == pytest.approx(1.0, abs=1e-6)
    for i, s in ranking:
        alone = dpiat_jax.similarity(candidates[i], target, sample_input=x)
        assert s == pytest.approx(alone, rel=1e-6, abs=1e-7)
        assert -1e-6 <= s <= 1 + 1e-6
