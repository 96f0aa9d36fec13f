"""A decoder written as MaxText and T5X write theirs, for the compatibility suite.

Its patterns: the layers stacked by ``nn.scan`` on parameter axis 1 (MaxText's default
``param_scan_axis``), each layer rematerialised (``nn.remat``), or unrolled as
``layers_{i}`` (``scan_layers=False``); ``DenseGeneral`` kernels with a heads axis
``(d, heads, head_dim)`` and an output projection contracting ``(heads, head_dim)``; an
optional fused ``(d, 3, heads, head_dim)`` query/key/value kernel (``fused_qkv``); a
gated MLP whose gate and up projections are one ``(d, 2, mlp)`` kernel (``fused_mlp``);
RMS norms; a token table tied to the logits (``Embed.attend``).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Config:
    """The decoder's sizes; ``scan`` stacks its layers, else they are unrolled."""

    vocab: int = 64
    d: int = 32
    heads: int = 4
    head_dim: int = 8
    mlp: int = 64
    layers: int = 2
    scan: bool = True
    fused_qkv: bool = False


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * scale


class Attention(nn.Module):
    """Causal multi-head attention with heads-axis kernels."""

    config: Config

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        if c.fused_qkv:
            qkv = nn.DenseGeneral((3, c.heads, c.head_dim), use_bias=False, name="qkv_proj")(x)
            q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        else:
            q, k, v = (
                nn.DenseGeneral((c.heads, c.head_dim), use_bias=False, name=name)(x)
                for name in ("query", "key", "value")
            )
        logits = jnp.einsum("bthd,bshd->bhts", q, k) / jnp.sqrt(c.head_dim).astype(x.dtype)
        causal = jnp.tril(jnp.ones((x.shape[1], x.shape[1]), bool))
        weights = jax.nn.softmax(jnp.where(causal, logits, -1e9), axis=-1)
        out = jnp.einsum("bhts,bshd->bthd", weights, v)
        return nn.DenseGeneral(c.d, axis=(-2, -1), use_bias=False, name="out")(out)


class MLP(nn.Module):
    """Gated MLP with the gate and up projections in one kernel."""

    config: Config

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        wi = nn.DenseGeneral((2, c.mlp), use_bias=False, name="wi")(x)
        h = nn.silu(wi[..., 0, :]) * wi[..., 1, :]
        return nn.DenseGeneral(c.d, use_bias=False, name="wo")(h)


class DecoderLayer(nn.Module):
    """Pre-norm attention and MLP with residuals; ``(carry, None)`` for ``nn.scan``."""

    config: Config

    @nn.compact
    def __call__(self, x: jax.Array, _: None = None) -> tuple[jax.Array, None]:
        x = x + Attention(self.config, name="self_attention")(
            RMSNorm(name="pre_self_attention_norm")(x)
        )
        x = x + MLP(self.config, name="mlp")(RMSNorm(name="post_self_attention_norm")(x))
        return x, None


class Decoder(nn.Module):
    """Token ids ``(batch, length)`` -> logits ``(batch, length, vocab)``."""

    config: Config

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        c = self.config
        embed = nn.Embed(c.vocab, c.d, name="token_embedder")
        x = embed(tokens)
        if c.scan:
            stack = nn.scan(
                nn.remat(DecoderLayer, prevent_cse=False),
                variable_axes={"params": 1},
                split_rngs={"params": True},
                length=c.layers,
            )
            x, _ = stack(c, name="layers")(x, None)
        else:
            for i in range(c.layers):
                x, _ = DecoderLayer(c, name=f"layers_{i}")(x)
        return embed.attend(RMSNorm(name="decoder_norm")(x))


def tokens() -> jax.Array:
    """A sample input: one sequence of 12 token ids."""
    return (jnp.arange(12, dtype=jnp.int32) % 64).reshape(1, 12)
