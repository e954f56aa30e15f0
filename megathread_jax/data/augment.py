"""Augmentation on the device, inside jit: random-resized-crop, flip, resize, normalise."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from megathread_jax.errors import ConfigurationError


def _normalise(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """Pixel values in [0, 255] -> (x / 255 - mean) / std, float32."""
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def _random_resized_crop(
    key: jax.Array, image: jax.Array, resolution: int, scale: Sequence[float], ratio: Sequence[float]
) -> jax.Array:
    """One image: a crop of random area fraction and aspect ratio, resized to `resolution`."""
    h, w = image.shape[0], image.shape[1]
    k_area, k_ratio, k_y, k_x = jax.random.split(key, 4)
    area = h * w * jax.random.uniform(k_area, minval=scale[0], maxval=scale[1])
    aspect = jnp.exp(jax.random.uniform(k_ratio, minval=jnp.log(ratio[0]), maxval=jnp.log(ratio[1])))
    crop_w = jnp.clip(jnp.sqrt(area * aspect), 1.0, w)
    crop_h = jnp.clip(jnp.sqrt(area / aspect), 1.0, h)
    y0 = jax.random.uniform(k_y) * (h - crop_h)
    x0 = jax.random.uniform(k_x) * (w - crop_w)
    scales = jnp.stack([resolution / crop_h, resolution / crop_w])
    translation = -jnp.stack([y0, x0]) * scales
    return jax.image.scale_and_translate(
        image, (resolution, resolution, image.shape[2]), (0, 1), scales, translation, "linear", antialias=True
    )


def _pad_and_crop(key: jax.Array, image: jax.Array, pad: int) -> jax.Array:
    """One image: zero-padded by `pad` on each side, then cropped back to its size at random."""
    h, w = image.shape[0], image.shape[1]
    padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    y, x = jax.random.randint(key, (2,), 0, 2 * pad + 1)
    return jax.lax.dynamic_slice(padded, (y, x, 0), (h, w, image.shape[2]))


def _resize(x: jax.Array, resolution: int) -> jax.Array:
    if x.shape[1:3] == (resolution, resolution):
        return x
    return jax.image.resize(x, (x.shape[0], resolution, resolution, x.shape[3]), "bilinear")


CROPS = ("random_resized", "pad")


def train_preprocess(
    images: jax.Array,
    key: jax.Array,
    *,
    resolution: int,
    crop: str = "random_resized",
    crop_scale: Sequence[float] = (0.08, 1.0),
    crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
    pad: int = 4,
    mean: Sequence[float],
    std: Sequence[float],
) -> jax.Array:
    """uint8 `(B, H, W, 3)` -> float32 `(B, resolution, resolution, 3)`, randomly cropped and flipped.

    crop "random_resized": a random area fraction `crop_scale` and aspect ratio, resized;
    crop "pad": zero-pad by `pad`, crop back at a random offset (the CIFAR recipe), then resize.
    """
    if crop not in CROPS:
        raise ConfigurationError(f"crop must be one of {CROPS}, got {crop!r}")
    crop_key, flip_key = jax.random.split(key)
    x = images.astype(jnp.float32)
    keys = jax.random.split(crop_key, x.shape[0])
    if crop == "random_resized":
        x = jax.vmap(lambda k, im: _random_resized_crop(k, im, resolution, crop_scale, crop_ratio))(keys, x)
    else:
        x = _resize(jax.vmap(lambda k, im: _pad_and_crop(k, im, pad))(keys, x), resolution)
    flip = jax.random.bernoulli(flip_key, 0.5, (x.shape[0], 1, 1, 1))
    return _normalise(jnp.where(flip, x[:, :, ::-1], x), mean, std)


def eval_preprocess(images: jax.Array, *, resolution: int, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """uint8 `(B, H, W, 3)` -> float32 `(B, resolution, resolution, 3)`: whole image, resized."""
    return _resize(_normalise(images, mean, std), resolution)
