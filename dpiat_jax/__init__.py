"""dpiat_jax: inter-architecture parameter transfer for JAX/Flax.

``dpiat_jax.transfer(src_params, src_def, dst_def, rng)`` returns an initialisation of
``dst_def`` built from the trained ``src_params`` of a different architecture, by the
DPIAT method (blocks along the module hierarchy, aligned by dynamic programming, matched
tensors cropped or centred into the target's shapes).

Pipeline stages (design.md), each a public module:
``layers`` -> ``blocks`` -> ``scores`` -> ``alignment`` -> ``matching`` -> ``tensors``
-> ``variables``.
"""

from dpiat_jax.alignment import Alignment, align
from dpiat_jax.api import match, module_blocks, rank_sources, similarity, transfer
from dpiat_jax.blocks import blocks, to_spec_tree
from dpiat_jax.layers import Layer, ModuleNode, layers, trace
from dpiat_jax.matching import MatchReport
from dpiat_jax.spec import LayerSpec
from dpiat_jax.tensors import clip

__version__ = "0.1.0"

__all__ = [
    "Alignment",
    "Layer",
    "LayerSpec",
    "MatchReport",
    "ModuleNode",
    "align",
    "blocks",
    "clip",
    "layers",
    "match",
    "module_blocks",
    "rank_sources",
    "similarity",
    "to_spec_tree",
    "trace",
    "transfer",
]
