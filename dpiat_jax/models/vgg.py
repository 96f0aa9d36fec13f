"""VGG-style plain CNNs (Simonyan & Zisserman, 2015): 3x3 conv stacks separated by max pools.

A network without residual connections, described by a config list of channel counts and
``"M"`` (2x2 max pool) entries, with optional batch norm and a small classifier. It is here as
a plain, sequential source/target (VGG-11 and a small variant for tiny images).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpiat_jax.models.common import batch_norm, conv

# fmt: off
VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
              512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg_small": (32, "M", 64, "M", 128),
}
# fmt: on
"""Feature configs: an int is a 3x3 conv with that many channels, ``"M"`` a 2x2 max pool."""


class VGG(nn.Module):
    """Plain CNN: for each config entry a 3x3 conv(+BN)+ReLU or a 2x2/2 max pool; then head.

    ``width`` multiplies every conv width. The head is global average pooling followed by
    ``hidden`` Dense+ReLU(+dropout) layers and a Dense classifier; global pooling (instead of
    torchvision's 7x7 flatten) keeps it usable at any input size. Returns logits
    ``(batch, num_classes)``.

    Attributes:
        cfg: channel counts and ``"M"`` pools (see :data:`VGG_CONFIGS`).
        batch_norm: whether a BatchNorm follows every conv.
        hidden: widths of the hidden Dense layers of the head.
        dropout_rate: dropout after every hidden Dense layer during training.
        width: multiplier of every conv width.
        num_classes: outputs of the classifier.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> model = VGG(cfg=(8, "M", 16), hidden=(8,), num_classes=3)
        >>> variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
        >>> model.apply(variables, jnp.zeros((2, 8, 8, 3))).shape
        (2, 3)
    """

    cfg: Sequence[int | str] = VGG_CONFIGS["vgg11"]
    batch_norm: bool = True
    hidden: Sequence[int] = ()
    dropout_rate: float = 0.5
    width: float = 1.0
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Return logits ``(batch, num_classes)`` for images ``(batch, height, width, C)``."""
        conv_id = 0
        for entry in self.cfg:
            if entry == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
                continue
            features = max(1, int(round(int(entry) * self.width)))
            x = conv(features, 3, name=f"conv{conv_id}", use_bias=True)(x)
            if self.batch_norm:
                x = batch_norm(train, f"bn{conv_id}")(x)
            x = nn.relu(x)
            conv_id += 1
        x = jnp.mean(x, axis=(1, 2))
        for i, h in enumerate(self.hidden):
            x = nn.relu(nn.Dense(h, name=f"fc{i}")(x))
            if self.dropout_rate > 0:
                x = nn.Dropout(self.dropout_rate, deterministic=not train, name=f"dropout{i}")(x)
        return nn.Dense(self.num_classes, name="head")(x)
