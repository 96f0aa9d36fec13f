"""A GPT-style decoder: the language model that the growth experiment grows.

Pre-norm residual blocks (``x + attention(norm(x))``, ``x + mlp(norm(x))``), causal
multi-head attention with ``(width, heads, head_dim)`` projections, a learned 1-D
position table and a token embedding; byte-level by default (vocabulary 256).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; returns ``(batch, length, width)``.

    Attributes:
        heads: attention heads (the width must divide by it).
    """

    heads: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Attends every position to itself and the positions before it."""
        width = x.shape[-1]
        head_dim = width // self.heads
        q, k, v = (
            nn.DenseGeneral((self.heads, head_dim), name=name)(x)
            for name in ("query", "key", "value")
        )
        mask = nn.make_causal_mask(jnp.ones(x.shape[:2], bool))
        attended = nn.dot_product_attention(q, k, v, mask=mask)
        return nn.DenseGeneral(width, axis=(-2, -1), name="out")(attended)


class Block(nn.Module):
    """A pre-norm transformer block: attention, then a 4x GELU MLP, each residual.

    Attributes:
        heads: attention heads.
        mlp_ratio: hidden width of the MLP over the block's width.
    """

    heads: int
    mlp_ratio: int = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns ``x`` plus the attention and MLP branches (same shape as ``x``)."""
        width = x.shape[-1]
        x = x + CausalSelfAttention(self.heads, name="attn")(nn.LayerNorm(name="norm1")(x))
        h = nn.Dense(self.mlp_ratio * width, name="fc")(nn.LayerNorm(name="norm2")(x))
        return x + nn.Dense(width, name="proj")(nn.gelu(h))


class GPT(nn.Module):
    """A decoder-only language model over token ids ``(batch, length)``.

    Returns next-token logits ``(batch, length, vocab_size)``.

    Attributes:
        vocab_size: tokens (256 for bytes).
        layers: transformer blocks.
        width: the model width.
        heads: attention heads per block.
        max_length: rows of the position table (the longest input).

    Example:
        >>> model = GPT(layers=1, width=16, heads=2, max_length=8)
        >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
        >>> model.apply(variables, jnp.zeros((2, 5), jnp.int32)).shape
        (2, 5, 256)
    """

    vocab_size: int = 256
    layers: int = 2
    width: int = 128
    heads: int = 4
    max_length: int = 128

    @nn.compact
    def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
        """Returns the logits of the token after each position."""
        del train  # no dropout: the same function in training and evaluation
        x = nn.Embed(self.vocab_size, self.width, name="embed")(tokens)
        positions = self.param(
            "pos_embed", nn.initializers.normal(0.02), (self.max_length, self.width)
        )
        x = x + positions[: tokens.shape[1]]
        for i in range(self.layers):
            x = Block(self.heads, name=f"block{i}")(x)
        return nn.Dense(self.vocab_size, name="head")(nn.LayerNorm(name="norm")(x))
