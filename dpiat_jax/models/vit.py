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

    Attributes:
        num_heads: attention heads.
        mlp_dim: hidden width of the MLP.
        dropout_rate: dropout after attention and after the MLP during training.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> block = EncoderBlock(num_heads=2, mlp_dim=16)
        >>> variables = block.init(jax.random.PRNGKey(0), jnp.ones((1, 5, 8)))
        >>> sorted(variables["params"])
        ['attn', 'ln1', 'ln2', 'mlp_fc1', 'mlp_fc2']
        >>> block.apply(variables, jnp.ones((1, 5, 8))).shape
        (1, 5, 8)
    """

    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Return the block output for tokens ``x`` ``(batch, tokens, width)``."""
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

    Attributes:
        patch_size: side of the square patches.
        dim: token width.
        depth: number of encoder blocks.
        num_heads: attention heads of every block.
        mlp_dim: hidden width of every block's MLP.
        dropout_rate: dropout of the embedding and inside the blocks during training.
        num_classes: outputs of the classifier.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> model = ViT(patch_size=4, dim=8, depth=1, num_heads=2, mlp_dim=16, num_classes=3)
        >>> variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
        >>> variables["params"]["pos_embedding"].shape
        (1, 5, 8)
        >>> model.apply(variables, jnp.zeros((2, 8, 8, 3))).shape
        (2, 3)
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
        """Return logits ``(batch, num_classes)`` for images ``(batch, height, width, C)``."""
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
