"""MobileNetV2 in Flax NNX, NHWC, with the attribute tree of torchvision's `mobilenet_v2`.

torchvision keys map one to one onto attribute paths: `features.2.conv.1.0.weight` is
`model.features[2].conv[1][0].kernel` (transposed), `classifier.1.weight` is `model.classifier[1]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from megathread_jax.models.convolution import Conv2d
from megathread_jax.models.layers import BatchNorm, torch_linear

# (expansion t, channels c, repeats n, first stride s), as in the paper and torchvision.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's `_make_divisible`: round to a multiple of `divisor`, losing at most 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNReLU6(nnx.List):
    """torchvision's Conv2dNormActivation: children 0 (conv) and 1 (batch norm), then ReLU6."""

    def __init__(self, in_features, out_features, kernel_size, *, stride=1, groups=1, dtype, conv_impl, rngs):
        super().__init__(
            [
                Conv2d(
                    in_features,
                    out_features,
                    kernel_size,
                    stride=stride,
                    groups=groups,
                    dtype=dtype,
                    conv_impl=conv_impl,
                    rngs=rngs,
                ),
                BatchNorm(out_features),
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self[1](self[0](x), jax.nn.relu6)


class InvertedResidual(nnx.Module):
    def __init__(self, in_features, out_features, stride, expansion, *, dtype, conv_impl, rngs):
        common = dict(dtype=dtype, conv_impl=conv_impl, rngs=rngs)
        hidden = int(round(in_features * expansion))
        layers = []
        if expansion != 1:
            layers.append(ConvBNReLU6(in_features, hidden, 1, **common))
        layers += [
            ConvBNReLU6(hidden, hidden, 3, stride=stride, groups=hidden, **common),
            Conv2d(hidden, out_features, 1, **common),
            BatchNorm(out_features),
        ]
        self.conv = nnx.List(layers)
        self.use_residual = stride == 1 and in_features == out_features

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x
        for layer in self.conv:
            y = layer(y)
        return x + y if self.use_residual else y


class MobileNetV2(nnx.Module):
    """MobileNetV2 classifier: NHWC float images in, float32 logits `(B, num_classes)` out."""

    classifier_path = "classifier.1"  # replaced when fine-tuning on another label set
    backbone_path = "features"

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        width_mult: float = 1.0,
        drop_rate: float = 0.2,
        dtype: jnp.dtype = jnp.float32,
        conv_impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        common = dict(dtype=dtype, conv_impl=conv_impl, rngs=rngs)
        self.num_classes = num_classes
        self.width_mult = width_mult
        in_features = make_divisible(32 * width_mult)
        last_features = make_divisible(1280 * max(1.0, width_mult))
        features = [ConvBNReLU6(3, in_features, 3, stride=2, **common)]
        for expansion, channels, repeats, stride in INVERTED_RESIDUAL_SETTING:
            out_features = make_divisible(channels * width_mult)
            for i in range(repeats):
                features.append(
                    InvertedResidual(in_features, out_features, stride if i == 0 else 1, expansion, **common)
                )
                in_features = out_features
        features.append(ConvBNReLU6(in_features, last_features, 1, **common))
        self.features = nnx.List(features)
        self.classifier = nnx.List(
            [
                nnx.Dropout(drop_rate, rngs=rngs),
                torch_linear(last_features, num_classes, dtype=dtype, rngs=rngs),
            ]
        )

    def shape_kwargs(self) -> dict[str, float]:
        """The `models.create` kwargs that rebuild a model of this shape."""
        return {"num_classes": self.num_classes, "width_mult": self.width_mult}

    def __call__(self, x: jax.typing.ArrayLike) -> jax.Array:
        """Logits `(B, num_classes)`, float32, of NHWC float images (a JAX or NumPy array)."""
        x = jnp.asarray(x)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"MobileNetV2 expects NHWC images with 3 channels, got shape {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(
                f"MobileNetV2 expects normalised float images, got {x.dtype} (preprocess uint8 pixels first)"
            )
        for layer in self.features:
            x = layer(x)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return self.classifier[1](self.classifier[0](x)).astype(jnp.float32)
