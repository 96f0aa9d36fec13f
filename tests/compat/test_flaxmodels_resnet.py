"""flaxmodels ResNet-18 and ResNet-34 (``pretrained=None``: random weights, nothing
downloaded), as flax users hold them: a linen module and its variables, or a
``TrainState`` with batch statistics.

flaxmodels fixes the widths by the architecture (64 to 512 channels): the one width a
user sets is the classifier's (``num_classes``), so the width change here is the head's
(10 <-> 20 classes). Blocks are numbered through the network (``BasicBlock_0`` ...), so a
layer's role is its stage and its place in the block (``stage2/Conv_0``).
"""

from __future__ import annotations

import functools
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from flax.training import train_state

import dpiat_jax
from compat.checks import (
    assert_every_block_seeded,
    assert_every_layer_seeded_by_its_role,
    assert_finite,
    assert_fresh_form,
    key,
    random_like,
    require,
)

flaxmodels = require("flaxmodels")

X = jnp.linspace(0.0, 1.0, 32 * 32 * 3, dtype=jnp.float32).reshape(1, 32, 32, 3)
INFERENCE = {"train": False}
BLOCK = r"^BasicBlock_(\d+)/"
STAGES = {"ResNet18": (2, 2, 2, 2), "ResNet34": (3, 4, 6, 3)}


class StateWithStats(train_state.TrainState):
    """A train state with batch statistics, as flax's examples build it."""

    batch_stats: Any


@functools.cache
def resnet(name: str = "ResNet18", classes: int = 10):
    """A flaxmodels ResNet with random weights and logits out."""
    return getattr(flaxmodels, name)(output="logits", pretrained=None, num_classes=classes)


def fresh(model):
    """The abstract variables of the model's own init."""
    return jax.eval_shape(lambda rng: model.init(rng, X, **INFERENCE), jax.random.key(0))


@functools.cache
def variables(name: str, classes: int):
    """Trained-like variables of :func:`resnet` (numpy draws; no compilation)."""
    return random_like(fresh(resnet(name, classes)), seed=len(name) * 100 + classes)


def stage_role(name: str):
    """The role of a layer of ``name``: ``BasicBlock_i/Conv_0`` becomes its stage's
    (``stage2/Conv_0``); layers outside blocks keep their path."""
    stage_of = [s for s, n in enumerate(STAGES[name]) for _ in range(n)]

    def role(path: str) -> str:
        head, _, rest = path.partition("/")
        if not head.startswith("BasicBlock_"):
            return path
        return f"stage{stage_of[int(head.removeprefix('BasicBlock_'))]}/{rest}"

    return role


@functools.cache
def forward(model):
    """The model's jitted forward pass in inference mode: variables -> logits."""
    return jax.jit(lambda v: model.apply(v, X, **INFERENCE))


def runs(model, out) -> None:
    """The target runs with the transferred variables, with finite output."""
    logits = forward(model)(out)
    assert logits.shape == (1, model.num_classes)
    assert_finite(logits)


def planned(src: tuple[str, int], dst: tuple[str, int]):
    """``(plan, result)`` of a transfer from a module and its variables."""
    the_plan = dpiat_jax.plan(
        resnet(*src),
        resnet(*dst),
        src_variables=variables(*src),
        sample_input=X,
        call_kwargs=INFERENCE,
    )
    out = the_plan.apply(variables(*src), key(0))
    assert_fresh_form(out, fresh(resnet(*dst)))
    return the_plan, out


@pytest.mark.parametrize(
    ("src", "dst"), [("ResNet18", "ResNet34"), ("ResNet34", "ResNet18")], ids=["18-34", "34-18"]
)
def test_depth_change_seeds_every_target_block_from_its_stage(src, dst):
    the_plan, out = planned((src, 10), (dst, 10))
    blocks = sum(STAGES[dst])
    assert_every_block_seeded(the_plan.report, BLOCK, blocks, stage_role(src), stage_role(dst))
    runs(resnet(dst, 10), out)


@pytest.mark.parametrize(("src", "dst"), [(10, 20), (20, 10)], ids=["10-20", "20-10"])
def test_head_width_change(src, dst):
    the_plan, out = planned(("ResNet18", src), ("ResNet18", dst))
    role = stage_role("ResNet18")
    assert_every_layer_seeded_by_its_role(the_plan.report, role)
    assert the_plan.report.pairs[-1][:2] == ("Dense_0", "Dense_0")
    runs(resnet("ResNet18", dst), out)


def test_train_state_goes_in_and_identity_is_exact():
    """A ``TrainState`` (built with ``apply_fn=model.apply``) carries the definition and
    the variables, batch statistics included; the result is a plain variables dict, the
    source's exactly within one architecture."""
    model, source = resnet("ResNet18", 10), variables("ResNet18", 10)
    state = StateWithStats.create(
        apply_fn=model.apply,
        params=source["params"],
        batch_stats=source["batch_stats"],
        tx=optax.sgd(0.1),
    )
    out = dpiat_jax.transfer(state, None, resnet("ResNet18", 10), key(0), sample_input=X)
    assert isinstance(out, dict)
    chex.assert_trees_all_equal(out, source)
    runs(model, out)
