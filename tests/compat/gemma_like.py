"""A small linen decoder with the patterns of Gemma's ``gm.nn.Transformer``.

The ``gemma`` package cannot be installed beside our pinned JAX (issue 12), so this
test model reproduces what matters for transfer (read from google-deepmind/gemma,
``gemma/gm/nn/_transformer.py``, ``_modules.py``, ``_layers.py``):

- the root defines ``__getattr__`` (Gemma forwards ``vision_encoder`` to its config)
  and builds its submodules in ``setup``;
- the root's ``__call__`` is wrapped in ``nn.jit`` (static ``self``), so linen caches
  the traced function per module configuration;
- an ``Embedder`` whose ``input_embedding`` table ``(vocab, d)`` is used for the input
  and, transposed, for the tied output (``decode``);
- ``Einsum`` modules holding one parameter ``w``: ``q_einsum (heads, d, head_dim)``, a
  separate fused KV projection ``kv_einsum (2, kv_heads, d, head_dim)`` with
  grouped-query attention (``kv_heads < heads``), ``attn_vec_einsum (heads, head_dim, d)``;
- the MLP's ``Einsum`` modules share the MLP's scope (``nn.share_scope``), so the MLP
  holds ``gating_einsum (2, hidden, d)`` (fused gate/up) and ``linear (hidden, d)``;
- ``RMSNorm`` with a ``scale``.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Config:
    """The model's sizes (Gemma's ``TransformerConfig``, reduced)."""

    vocab: int = 64
    d: int = 16
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 8
    hidden: int = 32


class Einsum(nn.Module):
    """A parameterised ``jnp.einsum`` (Gemma's ``_layers.Einsum``)."""

    shape: tuple[int, ...]
    weight_name: str = "w"

    @nn.compact
    def __call__(self, eqn: str, x: jax.Array) -> jax.Array:
        w = self.param(self.weight_name, nn.initializers.normal(), self.shape)
        return jnp.einsum(eqn, x, w)


class RMSNorm(nn.Module):
    """Gemma's RMSNorm: ``x / rms(x) * (1 + scale)``."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.zeros_init(), (x.shape[-1],))
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + 1e-6)
        return x * (1 + scale)


class Embedder(nn.Module):
    """The token table, used for the input and (transposed) for the output logits."""

    vocab_size: int
    embed_dim: int

    def setup(self):
        self.input_embedding_table = self.param(
            "input_embedding", nn.initializers.normal(), (self.vocab_size, self.embed_dim)
        )

    def encode(self, tokens: jax.Array) -> jax.Array:
        return self.input_embedding_table[(tokens,)] * jnp.sqrt(self.embed_dim)

    def decode(self, x: jax.Array) -> jax.Array:
        return x @ self.input_embedding_table.T


class Attention(nn.Module):
    """Grouped-query attention with a separate fused KV projection."""

    heads: int
    kv_heads: int
    features: int
    head_dim: int

    def setup(self):
        self.q_einsum = Einsum((self.heads, self.features, self.head_dim))
        self.kv_einsum = Einsum((2, self.kv_heads, self.features, self.head_dim))
        self.attn_vec_einsum = Einsum((self.heads, self.head_dim, self.features))

    def __call__(self, x: jax.Array) -> jax.Array:
        q = self.q_einsum("BTD,NDH->BTNH", x) * self.head_dim**-0.5
        k, v = self.kv_einsum("BSD,CKDH->CBSKH", x)
        b, t, _, h = q.shape
        q = q.reshape((b, t, self.kv_heads, self.heads // self.kv_heads, h))
        logits = jnp.einsum("BTKGH,BSKH->BTKGS", q, k)
        causal = jnp.tril(jnp.ones((t, t), bool))
        logits = jnp.where(causal[None, :, None, None, :], logits, -1e9)
        probs = jax.nn.softmax(logits, axis=-1)
        encoded = jnp.einsum("BTKGS,BSKH->BTKGH", probs, v).reshape((b, t, self.heads, h))
        return self.attn_vec_einsum("BTNH,NHD->BTD", encoded)


class FeedForward(nn.Module):
    """A gated MLP whose einsums share its scope (Gemma's ``FeedForward``)."""

    features: int
    hidden: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        gating = Einsum((2, self.hidden, self.features), weight_name="gating_einsum")
        nn.share_scope(self, gating)
        gate = gating("...F,NHF->...NH", x)
        activations = nn.gelu(gate[..., 0, :]) * gate[..., 1, :]
        linear = Einsum((self.hidden, self.features), weight_name="linear")
        nn.share_scope(self, linear)
        return linear("...H,HF->...F", activations)


class Block(nn.Module):
    """Pre-norm attention and MLP with residuals."""

    config: Config

    def setup(self):
        c = self.config
        self.pre_attention_norm = RMSNorm()
        self.attn = Attention(c.heads, c.kv_heads, c.d, c.head_dim)
        self.pre_ffw_norm = RMSNorm()
        self.mlp = FeedForward(c.d, c.hidden)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.pre_attention_norm(x))
        return x + self.mlp(self.pre_ffw_norm(x))


class Transformer(nn.Module):
    """The decoder: embedder, ``layer_{i}`` blocks, final norm, tied output."""

    config: Config

    def setup(self):
        self.embedder = Embedder(self.config.vocab, self.config.d)
        self.blocks = [Block(self.config, name=f"layer_{i}") for i in range(self.config.layers)]
        self.final_norm = RMSNorm()

    def __getattr__(self, name: str):
        # Gemma forwards ``vision_encoder`` to its config this way.
        if name == "vision_encoder":
            return getattr(self.config, "vision_encoder", None)
        return super().__getattr__(name)

    @functools.partial(nn.jit, static_argnames=("self",))
    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.embedder.encode(tokens)
        for block in self.blocks:
            x = block(x)
        return self.embedder.decode(self.final_norm(x))


def tokens(batch: int = 1, length: int = 6) -> jax.Array:
    """A deterministic batch of token ids."""
    return jnp.arange(batch * length, dtype=jnp.int32).reshape(batch, length) % 7
