"""dpiat_jax: inter-architecture parameter transfer for JAX/Flax.

``dpiat_jax.transfer(src_params, src_def, dst_def, rng)`` returns an initialisation of
``dst_def`` built from the trained ``src_params`` of a different architecture, by the
DPIAT method (blocks along the module hierarchy, aligned by dynamic programming, matched
tensors cropped or centred into the target's shapes).

Pipeline stages (design.md), each a public module of pure functions:
``dpiat_jax.layers`` -> ``dpiat_jax.blocks`` -> ``dpiat_jax.scores`` ->
``dpiat_jax.alignment`` -> ``dpiat_jax.matching`` -> ``dpiat_jax.tensors`` ->
``dpiat_jax.variables``; :func:`module_layers` and :func:`module_blocks` run the first
two on a module. ``dpiat_jax.plan(src_def, dst_def, ...)`` runs every stage on shapes
alone and returns a :class:`TransferPlan`, whose ``apply(src_variables, rng)`` is the
pure, jittable program that ``transfer`` runs.
"""

from dpiat_jax.alignment import Alignment, enable_compilation_cache
from dpiat_jax.api import (
    match,
    module_blocks,
    module_layers,
    rank_sources,
    similarity,
    transfer,
)
from dpiat_jax.blocks import to_spec_tree
from dpiat_jax.coverage import LowCoverageWarning
from dpiat_jax.deepening import DeepeningWarning
from dpiat_jax.layers import Layer, ModuleNode
from dpiat_jax.matchers import MATCHERS, align, get_matcher
from dpiat_jax.matching import MatchReport
from dpiat_jax.plan import TransferPlan, plan
from dpiat_jax.spec import LayerSpec
from dpiat_jax.structure import StructureWarning
from dpiat_jax.tensors import TENSOR_RULES, clip, get_tensor_rule
from dpiat_jax.trace.inference import InputInferenceWarning
from dpiat_jax.trace.inputs import Inputs
from dpiat_jax.trace.linen import UntracedModuleWarning
from dpiat_jax.trace.sown import IgnoredCollectionWarning

__version__ = "0.1.0"

__all__ = [
    "MATCHERS",
    "TENSOR_RULES",
    "Alignment",
    "DeepeningWarning",
    "IgnoredCollectionWarning",
    "InputInferenceWarning",
    "Inputs",
    "Layer",
    "LayerSpec",
    "LowCoverageWarning",
    "MatchReport",
    "ModuleNode",
    "StructureWarning",
    "TransferPlan",
    "UntracedModuleWarning",
    "align",
    "clip",
    "enable_compilation_cache",
    "get_matcher",
    "get_tensor_rule",
    "match",
    "module_blocks",
    "module_layers",
    "plan",
    "rank_sources",
    "similarity",
    "to_spec_tree",
    "transfer",
]
