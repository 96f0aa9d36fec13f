"""A small Vision Transformer (Dosovitskiy et al., 2021) for low-resolution images.

Patch embedding by a strided convolution, a learned class token and positional embedding,
pre-norm transformer blocks and a linear head on the class token. It is here as a
non-convolutional source/target: its class token and positional embedding are parameters
owned directly by :class:`ViT` (a pseudo-layer in the layer extraction).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: ``x + MHA(LN(x))`` then ``x + MLP(LN(x))``.

    The MLP is Dense(``mlp_dim``)-GELU-Dense(width). Dropout modules exist only when
    ``dropout_rate > 0``. Returns a tensor of the input's shape ``(batch, tokens, width)``.
    """

    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        dim = x.shape[-1]
        y = nn.LayerNorm(name="ln1")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, qkv_features=dim, deterministic=not train, name="attn"
        )(y)
        if self.dropout_rate > 0:
            y = nn.Dropout(self.dropout_rate, deterministic=not train, name="attn_dropout")(y)
        x = x + y
        y = nn.LayerNorm(name="ln2")(x)
        y = nn.gelu(nn.Dense(self.mlp_dim, name="mlp_fc1")(y))
        y = nn.Dense(dim, name="mlp_fc2")(y)
        if self.dropout_rate > 0:
            y = nn.Dropout(self.dropout_rate, deterministic=not train, name="mlp_dropout")(y)
        return x + y


class ViT(nn.Module):
    """Vision Transformer classifier.

    ``patch_size`` x ``patch_size`` patches are embedded to ``dim`` by a conv with
    kernel = stride = patch size; a class token is prepended and a positional embedding added
    (both ``self.param`` of this module, sized from the input at init, so apply at the
    resolution used for init); ``depth`` blocks with ``num_heads`` heads follow, then a final
    LayerNorm and a Dense head on the class token. Returns logits ``(batch, num_classes)``.
    """

    patch_size: int = 4
    dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_dim: int = 768
    dropout_rate: float = 0.0
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        p = self.patch_size
        x = nn.Conv(self.dim, (p, p), strides=(p, p), padding="VALID", name="patch_embed")(x)
        n, h, w, c = x.shape
        x = x.reshape((n, h * w, c))
        cls = self.param("cls_token", nn.initializers.zeros, (1, 1, c))
        pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, h * w + 1, c))
        x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, c)), x], axis=1) + pos
        if self.dropout_rate > 0:
            x = nn.Dropout(self.dropout_rate, deterministic=not train, name="embed_dropout")(x)
        for i in range(self.depth):
            x = EncoderBlock(self.num_heads, self.mlp_dim, self.dropout_rate, name=f"block{i}")(
                x, train
            )
        x = nn.LayerNorm(name="final_ln")(x)
        return nn.Dense(self.num_classes, name="head")(x[:, 0])
