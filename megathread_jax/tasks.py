"""Losses and metrics per task. Image classification: label-smoothed cross-entropy, top-1/top-5."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def classification_loss(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Mean cross-entropy in float32 against label-smoothed one-hot targets."""
    logits = logits.astype(jnp.float32)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean()


def classification_counts(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> dict[str, jax.Array]:
    """Sums over the batch (masked rows excluded): loss, top-1 and top-5 hits, example count."""
    logits = logits.astype(jnp.float32)
    if mask is None:
        mask = jnp.ones(labels.shape, bool)
    weight = mask.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    k = min(5, logits.shape[-1])
    top_k = jax.lax.top_k(logits, k)[1]
    top1 = top_k[:, 0] == labels
    top5 = jnp.any(top_k == labels[:, None], axis=-1)
    return {
        "loss": jnp.sum(loss * weight),
        "top1": jnp.sum(top1 * weight),
        "top5": jnp.sum(top5 * weight),
        "count": jnp.sum(weight),
    }


def next_token_loss(logits: jax.Array, tokens: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean cross-entropy (float32) of predicting tokens[:, 1:] from logits[:, :-1]; `mask` (B, T)
    marks the target tokens that count."""
    losses = next_token_losses(logits[:, :-1], tokens[:, 1:])
    weight = jnp.ones_like(losses) if mask is None else mask[:, 1:].astype(jnp.float32)
    return jnp.sum(losses * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def next_token_losses(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token cross-entropy (float32) of `targets` under `logits` (already aligned)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
