"""MobileViT (v1) in Flax NNX, NHWC, with the attribute tree of timm's `mobilevit_xxs/xs/s`.

timm keys map one to one onto attribute paths here, e.g. `stages.2.1.transformer.0.attn.qkv.weight`
is `model.stages[2][1].transformer[0].attn.qkv.kernel` (transposed).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from megathread_jax.models.convolution import Conv2d
from megathread_jax.models.layers import ConvNormAct, silu, torch_linear
from megathread_jax.models.mixed_precision import einsum_float32_out


@dataclasses.dataclass(frozen=True)
class StageSpec:
    channels: int
    stride: int
    depth: int  # inverted residual blocks
    expansion: float
    transformer_dim: int | None = None  # None: no MobileViT block in this stage
    transformer_depth: int = 0


@dataclasses.dataclass(frozen=True)
class MobileViTArch:
    stem_channels: int
    stages: tuple[StageSpec, ...]
    num_features: int
    patch_size: int = 2
    num_heads: int = 4
    mlp_ratio: float = 2.0


def _arch(widths, dims, num_features, expansion) -> MobileViTArch:
    c0, c1, c2, c3, c4 = widths
    return MobileViTArch(
        stem_channels=16,
        stages=(
            StageSpec(c0, 1, 1, expansion[0]),
            StageSpec(c1, 2, 3, expansion[0]),
            StageSpec(c2, 2, 1, expansion[1], dims[0], 2),
            StageSpec(c3, 2, 1, expansion[1], dims[1], 4),
            StageSpec(c4, 2, 1, expansion[1], dims[2], 3),
        ),
        num_features=num_features,
    )


# Widths and expansions of timm's model_cfgs (timm/models/mobilevit.py).
ARCHS: dict[str, MobileViTArch] = {
    "mobilevit_xxs": _arch((16, 24, 48, 64, 80), (64, 80, 96), 320, (2.0, 2.0)),
    "mobilevit_xs": _arch((32, 48, 64, 80, 96), (96, 120, 144), 384, (4.0, 4.0)),
    "mobilevit_s": _arch((32, 64, 96, 128, 160), (144, 192, 240), 640, (4.0, 4.0)),
}


class InvertedResidual(nnx.Module):
    """timm BottleneckBlock(bottle_in=True, linear_out=True): 1x1 expand, 3x3 depthwise, 1x1 project."""

    def __init__(self, in_features, out_features, stride, expansion, *, dtype, conv_impl, rngs):
        mid = int(in_features * expansion)
        common = dict(dtype=dtype, conv_impl=conv_impl, rngs=rngs)
        self.conv1_1x1 = ConvNormAct(in_features, mid, 1, **common)
        self.conv2_kxk = ConvNormAct(mid, mid, 3, stride=stride, groups=mid, **common)
        self.conv3_1x1 = ConvNormAct(mid, out_features, 1, activation=False, **common)
        self.has_shortcut = stride == 1 and in_features == out_features

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.conv3_1x1(self.conv2_kxk(self.conv1_1x1(x)))
        return x + y if self.has_shortcut else y


class Attention(nnx.Module):
    def __init__(self, dim: int, num_heads: int, *, dtype, rngs):
        self.num_heads = num_heads
        self.qkv = torch_linear(dim, 3 * dim, dtype=dtype, rngs=rngs)
        self.proj = torch_linear(dim, dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, c = x.shape
        heads, head_dim = self.num_heads, c // self.num_heads
        dtype = self.qkv.dtype  # the compute dtype; the Linears hold the parameters, their calls are not used
        x = x.astype(dtype)
        # The projections go straight into (q/k/v, B, heads, N, head_dim) and back out of it, so the
        # attention products need no transposes or slices of activations (docs/performance.md).
        qkv_kernel = self.qkv.kernel[...].astype(dtype).reshape(c, 3, heads, head_dim)
        qkv_bias = self.qkv.bias[...].astype(dtype).reshape(3, 1, heads, 1, head_dim)
        if n == 1:
            # One patch per sequence (the last stage at 64 px): the softmax over a single key is
            # exactly 1, so the output is v, and q and k get exactly zero gradient, as in PyTorch.
            out = jnp.einsum("bnc,chd->bhnd", x, qkv_kernel[:, 2]) + qkv_bias[2]
        else:
            q, k, v = jnp.einsum("bnc,cthd->tbhnd", x, qkv_kernel) + qkv_bias
            # Softmax in float32 whatever the compute dtype.
            logits = einsum_float32_out("bhqd,bhkd->bhqk", q, k)
            weights = jax.nn.softmax(logits * head_dim**-0.5, axis=-1).astype(v.dtype)
            out = jnp.einsum("bhqk,bhkd->bhqd", weights, v)
        proj_kernel = self.proj.kernel[...].astype(dtype).reshape(heads, head_dim, c)
        return jnp.einsum("bhqd,hdc->bqc", out, proj_kernel) + self.proj.bias[...].astype(dtype)


class Mlp(nnx.Module):
    def __init__(self, dim: int, hidden: int, *, dtype, rngs):
        self.fc1 = torch_linear(dim, hidden, dtype=dtype, rngs=rngs)
        self.fc2 = torch_linear(hidden, dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(silu(self.fc1(x)))


def _layer_norm(dim: int, *, dtype, rngs) -> nnx.LayerNorm:
    # PyTorch's eps; statistics in float32.
    return nnx.LayerNorm(dim, epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


class TransformerBlock(nnx.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, *, dtype, rngs):
        self.norm1 = _layer_norm(dim, dtype=dtype, rngs=rngs)
        self.attn = Attention(dim, num_heads, dtype=dtype, rngs=rngs)
        self.norm2 = _layer_norm(dim, dtype=dtype, rngs=rngs)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MobileViTBlock(nnx.Module):
    """Local 3x3 conv, global attention across patches (per pixel position), fuse with the input."""

    def __init__(self, channels, dim, depth, arch: MobileViTArch, *, dtype, conv_impl, rngs):
        common = dict(dtype=dtype, conv_impl=conv_impl, rngs=rngs)
        self.conv_kxk = ConvNormAct(channels, channels, 3, **common)
        self.conv_1x1 = Conv2d(channels, dim, 1, **common)
        self.transformer = nnx.List(
            [TransformerBlock(dim, arch.num_heads, arch.mlp_ratio, dtype=dtype, rngs=rngs) for _ in range(depth)]
        )
        self.norm = _layer_norm(dim, dtype=dtype, rngs=rngs)
        self.conv_proj = ConvNormAct(dim, channels, 1, **common)
        self.conv_fusion = ConvNormAct(2 * channels, channels, 3, **common)
        self.patch_size = arch.patch_size

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x
        x = self.conv_1x1(self.conv_kxk(x))
        b, h, w, c = x.shape
        p = self.patch_size
        new_h, new_w = math.ceil(h / p) * p, math.ceil(w / p) * p
        resized = (new_h, new_w) != (h, w)
        if resized:  # timm resizes bilinearly (align_corners=False, no antialiasing) and back
            x = jax.image.resize(x, (b, new_h, new_w, c), "bilinear", antialias=False)
        nh, nw = new_h // p, new_w // p
        # (B, nh*p, nw*p, C) -> (B*p*p, nh*nw, C): one sequence of patches per pixel position.
        x = x.reshape(b, nh, p, nw, p, c).transpose(0, 2, 4, 1, 3, 5).reshape(b * p * p, nh * nw, c)
        for block in self.transformer:
            x = block(x)
        x = self.norm(x)
        x = x.reshape(b, p, p, nh, nw, c).transpose(0, 3, 1, 4, 2, 5).reshape(b, new_h, new_w, c)
        if resized:
            x = jax.image.resize(x, (b, h, w, c), "bilinear", antialias=False)
        x = self.conv_proj(x)
        return self.conv_fusion(shortcut, x)


class ClassifierHead(nnx.Module):
    def __init__(self, in_features: int, num_classes: int, drop_rate: float, *, dtype, rngs):
        self.drop = nnx.Dropout(drop_rate, rngs=rngs)
        self.fc = torch_linear(in_features, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return self.fc(self.drop(x)).astype(jnp.float32)


class MobileViT(nnx.Module):
    """MobileViT image classifier: NHWC float images in, float32 logits `(B, num_classes)` out."""

    classifier_path = "head.fc"  # replaced when fine-tuning on another label set

    def __init__(
        self,
        arch: MobileViTArch,
        num_classes: int,
        *,
        drop_rate: float = 0.0,
        dtype: jnp.dtype = jnp.float32,
        conv_impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        common = dict(dtype=dtype, conv_impl=conv_impl, rngs=rngs)
        self.num_classes = num_classes
        self.stem = ConvNormAct(3, arch.stem_channels, 3, stride=2, **common)
        in_features = arch.stem_channels
        stages = []
        for spec in arch.stages:
            blocks = []
            for i in range(spec.depth):
                stride = spec.stride if i == 0 else 1
                blocks.append(InvertedResidual(in_features, spec.channels, stride, spec.expansion, **common))
                in_features = spec.channels
            if spec.transformer_dim is not None:
                blocks.append(
                    MobileViTBlock(spec.channels, spec.transformer_dim, spec.transformer_depth, arch, **common)
                )
            stages.append(nnx.List(blocks))
        self.stages = nnx.List(stages)
        self.final_conv = ConvNormAct(in_features, arch.num_features, 1, **common)
        self.head = ClassifierHead(arch.num_features, num_classes, drop_rate, dtype=dtype, rngs=rngs)

    def shape_kwargs(self) -> dict[str, int]:
        """The `models.create` kwargs that rebuild a model of this shape."""
        return {"num_classes": self.num_classes}

    def __call__(self, x: jax.typing.ArrayLike) -> jax.Array:
        """Logits `(B, num_classes)`, float32, of NHWC float images (a JAX or NumPy array)."""
        x = jnp.asarray(x)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"MobileViT expects NHWC images with 3 channels, got shape {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(
                f"MobileViT expects normalised float images, got {x.dtype} (preprocess uint8 pixels first)"
            )
        x = self.stem(x)
        for stage in self.stages:
            for block in stage:
                x = block(x)
        return self.head(self.final_conv(x))
