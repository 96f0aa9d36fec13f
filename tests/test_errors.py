"""Clear errors: the exception type and the words that tell the user what to fix.

The first part is the bad-input catalogue: :data:`CASES`, one :class:`Case` per mistake a
user makes (what they write, and the error or warning they must see), run from
:data:`PRELUDE`'s definitions. ``docs/make_errors.py`` renders the same table, with the
messages the cases produce, as ``docs/errors.md``; :func:`test_catalogue_is_up_to_date`
checks that the committed file is the rendering of today's messages.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import warnings
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import dpiat_jax
from dpiat_jax import LayerSpec
from dpiat_jax.coverage import LowCoverageWarning
from dpiat_jax.deepening import DeepeningWarning
from dpiat_jax.models import get_model
from dpiat_jax.structure import StructureWarning
from dpiat_jax.trace.inference import InputInferenceWarning
from dpiat_jax.trace.linen import UntracedModuleWarning
from dpiat_jax.trace.sown import IgnoredCollectionWarning

DOCS = Path(__file__).resolve().parent.parent / "docs"

# ----------------------------------------------------------------------------------
# The bad-input catalogue.

#: The definitions every case uses (shown at the top of docs/errors.md).
PRELUDE = """\
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

import dpiat_jax

key = jax.random.key(0)
image = jnp.zeros((1, 8, 8, 3))
vector = jnp.zeros((1, 4))
tokens = jnp.zeros((1, 5, 8))


class Cnn(nn.Module):  # global average pooling: any image size gives the same shapes
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        self.sow("intermediates", "features", x)
        return nn.Dense(2, name="head")(x.mean(axis=(1, 2)))


class FlatCnn(nn.Module):  # a flattening head: its shape follows the image size
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        return nn.Dense(2, name="head")(x.reshape((x.shape[0], -1)))


class Mlp(nn.Module):
    @nn.compact
    def __call__(self, x, scale: float = 1.0):
        return nn.Dense(2, name="head")(nn.relu(nn.Dense(8, name="hidden")(x))) * scale


class Nested(nn.Module):  # the Mlp's dense layers inside a block, then a conv
    @nn.compact
    def __call__(self, x):
        x = Mlp(name="block")(x)
        return nn.Conv(2, (3,), name="conv")(x[..., None])


class Conv1d(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Conv(4, (3,), name="conv")(x[..., None])


class Gain(nn.Module):  # a layer kind of its own: one learned tensor of any shape
    shape: tuple

    @nn.compact
    def __call__(self, x):
        return x * self.param("gain", nn.initializers.ones, self.shape).mean()


class TwoInputs(nn.Module):
    @nn.compact
    def __call__(self, x, mask):
        return nn.Dense(2, name="head")(x * mask)


class Heads(nn.Module):  # attention whose projections hold (heads, head_dim) in one axis
    heads: int
    dim: int

    @nn.compact
    def __call__(self, x):
        h, d = self.heads, self.dim
        q, k, v = (nn.Dense(h * d, name=n)(x).reshape(x.shape[:2] + (h, d)) for n in "qkv")
        w = jax.nn.softmax(jnp.einsum("bthd,bshd->bhts", q, k), -1)
        out = jnp.einsum("bhts,bshd->bthd", w, v).reshape(x.shape[:2] + (h * d,))
        return nn.Dense(x.shape[-1], name="o")(out)


class Pair(nnx.Module):  # an NNX module: linen's call interceptors never see its layers
    def __init__(self, rngs: nnx.Rngs):
        self.a = nnx.Linear(4, 8, rngs=rngs)
        self.b = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
        return self.b(self.a(x))


class Bridged(nn.Module):  # the NNX module inside a linen one
    @nn.compact
    def __call__(self, x):
        return nnx.bridge.to_linen(Pair, name="pair")(nn.Dense(4, name="stem")(x))


class Block(nn.Module):  # two dense layers, no residual path
    @nn.compact
    def __call__(self, x):
        return nn.Dense(4, name="fc2")(nn.relu(nn.Dense(8, name="fc1")(x)))


class Tower(nn.Module):  # a stem, blocks, a head
    depth: int

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(4, name="stem")(x)
        for i in range(self.depth):
            x = Block(name=f"block{i}")(x)
        return nn.Dense(2, name="head")(x)


cnn_vars = Cnn().init(key, image)
mlp_vars = Mlp().init(key, vector)
gain_vars = Gain((4,)).init(key, vector)
two_vars = TwoInputs().init(key, vector, vector)
one_head_vars = Heads(1, 8).init(key, tokens)
bridged_vars = Bridged().init(key, vector)
tower_vars = Tower(1).init(key, vector)
_, sown = Cnn().apply(cnn_vars, image, mutable=["intermediates"])
cnn_vars_and_features = {**cnn_vars, **sown}  # what apply(..., mutable=...) hands back
"""


@dataclasses.dataclass(frozen=True)
class Case:
    """One mistake: what the user writes, and what they must see.

    Attributes:
      name: the test id (and the anchor in docs/errors.md).
      title: what the user does wrongly, in a few words.
      code: the statement, as the user writes it (run with :data:`PRELUDE`'s names).
      expected: the exception or warning class the user sees.
      match: a regular expression the message must contain (the cause and the fix).
    """

    name: str
    title: str
    code: str
    expected: type[BaseException]
    match: str

    @property
    def warns(self) -> bool:
        """Whether the user sees a warning (the call goes through) rather than an error."""
        return issubclass(self.expected, Warning)


CASES: tuple[Case, ...] = (
    Case(
        "params-of-another-model",
        "The variables of another model, no sample_input",
        "dpiat_jax.transfer(mlp_vars, Cnn(), Cnn(), key)",
        ValueError,
        r"params/hidden/kernel: not created by the module(.|\n)*another model(.|\n)*src_def",
    ),
    Case(
        "params-of-another-model-with-input",
        "The variables of another model, with sample_input",
        "dpiat_jax.transfer(mlp_vars, Cnn(), Cnn(), key, sample_input=image)",
        ValueError,
        r"`src_params` does not fit Cnn(.|\n)*params/conv/kernel: missing(.|\n)*another model",
    ),
    Case(
        "call-kwargs-typo",
        "A keyword in call_kwargs that __call__ does not take",
        'dpiat_jax.transfer(mlp_vars, Mlp(), Mlp(), key, call_kwargs={"scal": 2.0})',
        TypeError,
        r"`call_kwargs` holds \['scal'\].*Mlp.__call__.*Did you mean 'scale'\?",
    ),
    Case(
        "sown-intermediates",
        "Sown intermediates among the variables, no sample_input",
        "dpiat_jax.transfer(cnn_vars_and_features, Cnn(), Cnn(), key)",
        IgnoredCollectionWarning,
        r"`src_params` holds the collection 'intermediates'.*not transferable.*ignored",
    ),
    Case(
        "sown-intermediates-with-input",
        "Sown intermediates among the variables, with sample_input",
        "dpiat_jax.transfer(cnn_vars_and_features, Cnn(), Cnn(), key, sample_input=image)",
        IgnoredCollectionWarning,
        r"'intermediates'.*ignored.*Pass only the variables",
    ),
    Case(
        "rng-not-a-key",
        "An rng that is neither a key nor an int seed",
        "dpiat_jax.transfer(mlp_vars, Mlp(), Mlp(), 0.5)",
        TypeError,
        r"`rng` must be a PRNG key \(jax.random.key\(0\).*or an int seed, got float",
    ),
    Case(
        "two-inputs-one-array",
        "One array for a model with two positional inputs",
        "dpiat_jax.transfer(two_vars, TwoInputs(), TwoInputs(), key, sample_input=vector)",
        TypeError,
        r"`sample_input` gives TwoInputs.__call__.*1 positional.*takes 2.*Inputs\(x, mask\)",
    ),
    Case(
        "two-inputs-none-given",
        "No sample_input for a model with two positional inputs",
        "dpiat_jax.transfer(two_vars, TwoInputs(), TwoInputs(), key)",
        ValueError,
        r"No input can be inferred for TwoInputs.__call__.*Inputs\(x, mask\)",
    ),
    Case(
        "three-inputs-tuple",
        "A tuple of three arrays as sample_input",
        "dpiat_jax.transfer(cnn_vars, Cnn(), Cnn(), key, sample_input=(image, image, image))",
        TypeError,
        r"`sample_input` must be one value for both models or a \(src, dst\) pair.*Inputs",
    ),
    Case(
        "inferred-input-decides-the-target",
        "No sample_input, and the target's shapes depend on the input size",
        "dpiat_jax.transfer(cnn_vars, Cnn(), FlatCnn(), key)",
        InputInferenceWarning,
        r"inferred from `src_params`: shape \(1, 4, 4, 3\).*`dst_def`'s variables depend"
        r".*params/head/kernel.*sample_input=",
    ),
    Case(
        "no-shared-layer-kinds",
        "Nothing moves: no layer kind in common",
        "dpiat_jax.transfer(mlp_vars, Mlp(), Conv1d(), key, sample_input=vector)",
        LowCoverageWarning,
        r"moves 0 of the target's.*no shared layer kinds: the source has dense, the target "
        r"conv1d",
    ),
    Case(
        "blocks-against-single-layers",
        "Nothing moves: blocks against single layers",
        "dpiat_jax.transfer(mlp_vars, Mlp(), Nested(), key, sample_input=vector)",
        LowCoverageWarning,
        r"blocks against single layers.*dense at depth 1.*dense at depth 2.*matcher='flat'",
    ),
    Case(
        "ranks-differ",
        "Nothing moves: the paired tensors' ranks differ",
        "dpiat_jax.transfer(gain_vars, Gain((4,)), Gain((2, 4)), key, sample_input=vector)",
        LowCoverageWarning,
        r"ranks differ: .*params/gain.*\(4,\) vs \(2, 4\)",
    ),
    Case(
        "module-class",
        "A module class instead of an instance",
        "dpiat_jax.transfer(mlp_vars, Mlp, Mlp(), key)",
        TypeError,
        r"`src_def` is the class Mlp, not a module instance; pass Mlp\(...\)",
    ),
    Case(
        "variables-not-a-dict",
        "Variables that are not a dict",
        "dpiat_jax.transfer([mlp_vars], Mlp(), Mlp(), key)",
        TypeError,
        r"`src_params` must be a Flax variables dict",
    ),
    Case(
        "bare-target-without-input",
        "A bare module and a spec tree for similarity, no sample_input",
        'dpiat_jax.similarity([dpiat_jax.LayerSpec("dense", (4, 8))], Mlp())',
        ValueError,
        r"`dst` is a bare module: pass sample_input=",
    ),
    Case(
        "heads-a-crop-cuts",
        "Heads the source's forward pass does not show: one head against three",
        "dpiat_jax.transfer(one_head_vars, Heads(1, 8), Heads(3, 4), key, sample_input=tokens)",
        StructureWarning,
        r"not kept apart: params/q/bias.*params/q/kernel \(heads share an axis with the head "
        r"dimension and their count differs: cropped as one axis\)",
    ),
    Case(
        "modules-never-seen-called",
        "Modules that tracing never sees called (an NNX module bridged into linen)",
        "dpiat_jax.transfer(bridged_vars, Bridged(), Bridged(), key, sample_input=vector)",
        UntracedModuleWarning,
        r"2 module\(s\) holding variables were never seen called.*pair/a, pair/b.*"
        r"rebuilt from the variable tree",
    ),
    Case(
        "deepen-without-residual-blocks",
        'deepen="identity" where the new blocks have no residual path',
        "dpiat_jax.transfer(tower_vars, Tower(1), Tower(3), key, sample_input=vector,"
        ' deepen="identity")',
        DeepeningWarning,
        r'deepen="identity": 2 new block\(s\) keep their copied values.*block1 \(not residual'
        r".*plan.deepening.kept",
    ),
    Case(
        "shape-as-sample-input",
        "A shape where an input is expected",
        "dpiat_jax.transfer(mlp_vars, Mlp(), Mlp(), key, sample_input=(1, 4))",
        TypeError,
        r"`sample_input` is \(1, 4\), a shape: pass an input of that shape, e\.g\. "
        r"sample_input=jnp\.zeros\(\(1, 4\)\)",
    ),
    Case(
        "unknown-matcher",
        "An unknown matcher name",
        'dpiat_jax.transfer(mlp_vars, Mlp(), Mlp(), key, matcher="dpp")',
        ValueError,
        r"dpp.*'dp'",
    ),
)


@pytest.fixture(scope="module")
def prelude() -> dict:
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        exec(PRELUDE, namespace)
    return namespace


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_catalogue_case(case, prelude):
    namespace = dict(prelude)
    if case.warns:
        with pytest.warns(case.expected, match=case.match):
            exec(case.code, namespace)
    else:
        with pytest.raises(case.expected, match=case.match):
            exec(case.code, namespace)


def _load_docs_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_dpiat_docs_{name}", DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_catalogue_is_up_to_date():
    make_errors = _load_docs_script("make_errors")
    rendered = make_errors.render(PRELUDE, CASES)
    committed = (DOCS / "errors.md").read_text()
    assert rendered == committed, (
        "docs/errors.md is out of date: run `python docs/make_errors.py` and commit it."
    )


V = jnp.zeros((1, 4))
IMG = jnp.zeros((1, 8, 8, 3))


def key(seed: int) -> jax.Array:
    return jax.random.key(seed, impl="rbg")


def numpy_variables(module: nn.Module, x) -> dict:
    """Variables of ``module`` from an abstract init, as numpy arrays (nothing compiled)."""
    abstract = jax.eval_shape(module.init, jax.random.key(0), x)
    rng = np.random.default_rng(0)
    flat = traverse_util.flatten_dict(abstract)
    return traverse_util.unflatten_dict(
        {k: np.abs(rng.normal(size=v.shape)).astype(v.dtype) + 0.1 for k, v in flat.items()}
    )


class ReluOnly(nn.Module):
    """A module without layers: it only applies a function."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.relu(x)


class Cnn(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        return nn.Dense(2, name="head")(jnp.mean(x, axis=(1, 2)))


class OddSize(nn.Module):
    """A conv net on 5x5 images with a flattening head: no default input size fits."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        return nn.Dense(2, name="head")(x.reshape((x.shape[0], -1)))


@pytest.fixture(scope="module")
def mlp():
    module = get_model("mlp", hidden_sizes=(8,), num_classes=3)
    return module, numpy_variables(module, V)


@pytest.fixture(scope="module")
def cnn():
    module = Cnn()
    return module, numpy_variables(module, IMG)


# ----------------------------------------------------------------------------------
# Modules without layers.


def test_target_without_layers(mlp):
    module, variables = mlp
    with pytest.raises(ValueError, match="no layers") as info:
        dpiat_jax.transfer(variables, module, ReluOnly(), key(0), sample_input=V)
    assert "dst_def" in str(info.value)
    with pytest.raises(ValueError, match="no layers"):
        dpiat_jax.match(variables, module, ReluOnly(), key(0), sample_input=V)


def test_source_without_layers(mlp):
    # The source module creates no variables at all, so its (empty) params do fit it;
    # the problem to report is that it has no layers to transfer from.
    module, _ = mlp
    for empty in ({}, {"params": {}}):
        with pytest.raises(ValueError, match="no layers") as info:
            dpiat_jax.transfer(empty, ReluOnly(), module, key(0), sample_input=V)
        assert "src" in str(info.value)


# ----------------------------------------------------------------------------------
# Variables that do not fit their module.


def test_variables_of_another_shape_name_the_path(mlp):
    module, variables = mlp
    wider = get_model("mlp", hidden_sizes=(16,), num_classes=3)
    with pytest.raises(ValueError) as info:
        dpiat_jax.transfer(variables, wider, module, key(0), sample_input=V)
    message = str(info.value)
    assert "src_params" in message
    assert "params/dense0/kernel" in message
    assert "(4, 8)" in message and "(4, 16)" in message


def test_missing_and_extra_tensors_name_the_path(mlp):
    module, variables = mlp
    missing = {"params": {"dense0": variables["params"]["dense0"]}}
    with pytest.raises(ValueError, match="params/head/kernel: missing"):
        dpiat_jax.transfer(missing, module, module, key(0), sample_input=V)
    extra = {"params": {**variables["params"], "extra": {"kernel": np.zeros((2, 2))}}}
    with pytest.raises(ValueError, match="params/extra/kernel"):
        dpiat_jax.transfer(extra, module, module, key(0), sample_input=V)
    stats = {**variables, "batch_stats": {"bn": {"mean": np.zeros(3)}}}
    with pytest.raises(ValueError, match="batch_stats"):
        dpiat_jax.transfer(stats, module, module, key(0), sample_input=V)


def test_variables_that_are_not_a_dict(mlp):
    module, variables = mlp
    with pytest.raises(TypeError, match="src_params"):
        dpiat_jax.transfer([variables], module, module, key(0), sample_input=V)


# ----------------------------------------------------------------------------------
# Inputs.


def test_sample_input_of_the_wrong_rank(cnn):
    module, variables = cnn
    flat_input = jnp.zeros((1, 8))
    with pytest.raises(ValueError, match="sample_input") as info:
        dpiat_jax.transfer(variables, module, module, key(0), sample_input=flat_input)
    assert "(1, 8)" in str(info.value)
    assert "src_params" in str(info.value)
    with pytest.raises(ValueError, match="sample_input") as info:
        dpiat_jax.transfer(variables, module, module, key(0), sample_input=(IMG, flat_input))
    assert "dst_def" in str(info.value) and "(1, 8)" in str(info.value)


def test_sample_input_neither_one_nor_a_pair(cnn):
    module, variables = cnn
    with pytest.raises(TypeError, match="sample_input"):
        dpiat_jax.transfer(variables, module, module, key(0), sample_input=(IMG, IMG, IMG))


def test_inference_failure_asks_for_sample_input():
    module = OddSize()
    variables = numpy_variables(module, jnp.zeros((1, 5, 5, 3)))
    with pytest.raises(ValueError, match="sample_input=") as info:
        dpiat_jax.transfer(variables, module, module, key(0))
    assert "infer" in str(info.value)
    # With the input given it works.
    out = dpiat_jax.transfer(
        variables, module, module, key(0), sample_input=jnp.zeros((1, 5, 5, 3))
    )
    np.testing.assert_array_equal(
        out["params"]["conv"]["kernel"], variables["params"]["conv"]["kernel"]
    )


def test_bare_module_without_sample_input_asks_for_it():
    tree = [LayerSpec("dense", (4, 8)), LayerSpec("dense", (8, 3))]
    with pytest.raises(ValueError, match="sample_input="):
        dpiat_jax.similarity(tree, get_model("mlp", hidden_sizes=(8,), num_classes=3))


# ----------------------------------------------------------------------------------
# Definitions and keyword arguments.


def test_non_flax_definitions(mlp):
    module, variables = mlp
    with pytest.raises(TypeError, match="src_def"):
        dpiat_jax.transfer(variables, "mlp", module, key(0), sample_input=V)
    with pytest.raises(TypeError, match="dst_def"):
        dpiat_jax.transfer(variables, module, lambda x: x, key(0), sample_input=V)
    with pytest.raises(TypeError, match="dst_def"):
        dpiat_jax.match(variables, module, object(), key(0), sample_input=V)
    # A module class instead of an instance says so.
    with pytest.raises(TypeError, match="instance"):
        dpiat_jax.transfer(variables, module, nn.Dense, key(0), sample_input=V)


def test_unknown_keyword_argument(mlp):
    module, variables = mlp
    with pytest.raises(TypeError, match="sample_inputs"):
        dpiat_jax.transfer(variables, module, module, key(0), sample_inputs=V)
    with pytest.raises(TypeError, match="strict"):
        dpiat_jax.transfer(variables, module, module, key(0), strict=True)
    with pytest.raises(TypeError, match="sample_inputs"):
        dpiat_jax.match(variables, module, module, key(0), sample_inputs=V)


# ----------------------------------------------------------------------------------
# Spec trees.


def test_spec_tree_with_non_layerspec_leaf_names_the_index_path():
    good = [LayerSpec("dense", (4, 4))]
    bad = [LayerSpec("dense", (4, 4)), [LayerSpec("dense", (4, 4)), {"kind": "dense"}]]
    with pytest.raises(TypeError, match=r"\(1, 1\)") as info:
        dpiat_jax.align(bad, good)
    assert "src_tree" in str(info.value) and "LayerSpec" in str(info.value)
    assert "dict" in str(info.value)
    with pytest.raises(TypeError, match=r"\(1, 1\)") as info:
        dpiat_jax.align(good, bad)
    assert "dst_tree" in str(info.value)
    with pytest.raises(TypeError, match=r"\(0,\)"):
        dpiat_jax.align([3], good)
    with pytest.raises(TypeError, match=r"\(1, 1\)"):
        dpiat_jax.similarity(bad, good)
    with pytest.raises(TypeError, match=r"\(1, 1\)"):
        dpiat_jax.rank_sources([good, bad], good)
    with pytest.raises(TypeError, match="LayerSpec"):
        dpiat_jax.align(LayerSpec("dense", (4, 4)), good)  # the root must be a list


def test_spec_tree_with_a_cycle():
    inner = [LayerSpec("dense", (4, 4))]
    tree = [LayerSpec("dense", (4, 4)), inner]
    inner.append(tree)
    with pytest.raises(ValueError, match="cycle"):
        dpiat_jax.align(tree, [LayerSpec("dense", (4, 4))])
    with pytest.raises(ValueError, match="cycle"):
        dpiat_jax.similarity([LayerSpec("dense", (4, 4))], tree)
    # A block used twice (shared, not a cycle) is fine.
    block = [LayerSpec("dense", (4, 4)), LayerSpec("dense", (4, 4))]
    assert dpiat_jax.align([block, block], [block]).score > 0


def test_layerspec_validation():
    with pytest.raises(ValueError, match="positive"):
        LayerSpec("conv2d", (3, 0, 4, 4))
    with pytest.raises(TypeError, match="kind"):
        LayerSpec(3, (4,))
    with pytest.raises(TypeError, match="shape"):
        LayerSpec("dense", 4)


# ----------------------------------------------------------------------------------
# What the catalogue's cases accept instead.


def test_an_int_rng_is_a_seed_and_legacy_keys_keep_working(prelude):
    mlp, variables, x = prelude["Mlp"](), prelude["mlp_vars"], prelude["vector"]
    reference = dpiat_jax.transfer(variables, mlp, mlp, jax.random.key(3), sample_input=x)
    for rng in (3, np.int32(3), jnp.asarray(3)):
        out = dpiat_jax.transfer(variables, mlp, mlp, rng, sample_input=x)
        jax.tree.map(np.testing.assert_array_equal, out, reference)
    legacy = dpiat_jax.transfer(variables, mlp, mlp, jax.random.PRNGKey(3), sample_input=x)
    assert jax.tree.structure(legacy) == jax.tree.structure(reference)
    for bad in (True, "0", jnp.zeros(3, jnp.uint32)):
        with pytest.raises(TypeError, match="`rng` must be a PRNG key"):
            dpiat_jax.transfer(variables, mlp, mlp, bad, sample_input=x)


def test_several_positional_inputs(prelude):
    two, variables, x = prelude["TwoInputs"](), prelude["two_vars"], prelude["vector"]
    rng = jax.random.key(1)
    out = dpiat_jax.transfer(variables, two, two, rng, sample_input=dpiat_jax.Inputs(x, x))
    kernel = variables["params"]["head"]["kernel"]
    np.testing.assert_array_equal(out["params"]["head"]["kernel"], kernel)
    # A pair whose entries are tuples gives each model its positional inputs.
    pair = dpiat_jax.transfer(variables, two, two, rng, sample_input=((x, x), (x, x)))
    jax.tree.map(np.testing.assert_array_equal, pair, out)
    report = dpiat_jax.match(variables, two, two, sample_input=dpiat_jax.Inputs(x, x))
    assert report.param_coverage == 1.0
    layers = dpiat_jax.module_layers(two, sample_input=(x, x))
    assert [layer.kind for layer in layers] == ["dense"]
    # A 2-tuple of arrays stays a (src_input, dst_input) pair.
    with pytest.raises(TypeError, match=r"Inputs\(x, mask\)"):
        dpiat_jax.transfer(variables, two, two, rng, sample_input=(x, x))


def test_sown_intermediates_are_ignored(prelude):
    cnn, image = prelude["Cnn"](), prelude["image"]
    plain, with_features = prelude["cnn_vars"], prelude["cnn_vars_and_features"]
    rng = jax.random.key(2)
    reference = dpiat_jax.transfer(plain, cnn, cnn, rng, sample_input=image)
    with pytest.warns(IgnoredCollectionWarning, match="intermediates"):
        out = dpiat_jax.transfer(with_features, cnn, cnn, rng, sample_input=image)
    assert set(out) == set(reference) == {"params"}
    jax.tree.map(np.testing.assert_array_equal, out, reference)
    with pytest.warns(IgnoredCollectionWarning, match="intermediates"):
        dpiat_jax.similarity((cnn, with_features), cnn)


def test_inference_prefers_the_smallest_input_that_fits(prelude):
    from dpiat_jax.trace.adapter import adapt

    cnn, variables = prelude["Cnn"](), prelude["cnn_vars"]
    traced = adapt(cnn, "src_params").trace(variables, None, {}, "src_params")
    assert traced.sample_input.shape == (1, 4, 4, 3)
    assert traced.inferred.shape == (1, 4, 4, 3)
    assert [x.shape for x in traced.inferred.others] == [(1, 32, 32, 3)]
    with warnings.catch_warnings():
        # The target's shapes do not depend on the choice: no warning.
        warnings.simplefilter("error", InputInferenceWarning)
        report = dpiat_jax.match(variables, cnn, cnn)
    assert report.inferred_input == (1, 4, 4, 3)
    given = dpiat_jax.match(variables, cnn, cnn, sample_input=prelude["image"])
    assert given.inferred_input is None


def test_a_source_whose_shapes_follow_the_input_determines_it(prelude):
    from dpiat_jax.trace.adapter import adapt

    flat = prelude["FlatCnn"]()
    variables = flat.init(jax.random.key(0), jnp.zeros((1, 12, 12, 3)))
    traced = adapt(flat, "src_params").trace(variables, None, {}, "src_params")
    assert traced.sample_input.shape == (1, 12, 12, 3)
    assert traced.inferred.others == ()
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputInferenceWarning)
        dpiat_jax.match(variables, flat, flat)


def test_low_coverage_sets_the_report_flag(prelude):
    mlp, variables, x = prelude["Mlp"](), prelude["mlp_vars"], prelude["vector"]
    with pytest.warns(LowCoverageWarning, match="no shared layer kinds"):
        report = dpiat_jax.match(variables, mlp, prelude["Conv1d"](), sample_input=x)
    assert report.low_coverage and report.param_coverage == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowCoverageWarning)
        same = dpiat_jax.match(variables, mlp, mlp, sample_input=x)
    assert not same.low_coverage
    with pytest.warns(LowCoverageWarning, match="no shared layer kinds"):
        dpiat_jax.plan(mlp, prelude["Conv1d"](), sample_input=x)
