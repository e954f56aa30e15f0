"""Hugging Face's logits processors for decoding: the repetition penalty and `no_repeat_ngram_size`,
on a fixed-size token buffer of which the first `length` slots are filled (so the decoding loop
compiles once per buffer size)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def penalise_repetition(
    logits: jax.Array, tokens: jax.Array, slot_mask: jax.Array, length: jax.Array, penalty: jax.Array
) -> jax.Array:
    """Hugging Face's repetition penalty: the logit of every token among the first `length` of
    `tokens` (B, S), from the first real one (`slot_mask` 1: the left padding is not counted), is
    divided by `penalty` where positive and multiplied by it where negative."""
    rows = jnp.arange(tokens.shape[0])[:, None]
    counted = (jnp.arange(tokens.shape[1]) < length) & (jnp.cumsum(slot_mask, axis=1) > 0)
    seen = jnp.zeros(logits.shape, bool).at[rows, tokens].max(counted)
    penalised = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(seen, penalised, logits)


def ban_repeated_ngrams(logits: jax.Array, tokens: jax.Array, length: jax.Array, size: int) -> jax.Array:
    """Hugging Face's `no_repeat_ngram_size`: a token that would complete an n-gram (n = `size`)
    already among the first `length` of `tokens` (B, S), left padding included, gets -inf."""
    slots = tokens.shape[1]
    if slots < size:
        return logits
    windows = jnp.stack([tokens[:, k : slots - size + 1 + k] for k in range(size)], axis=-1)  # (B, S-n+1, n)
    prefix = jax.lax.dynamic_slice_in_dim(tokens, jnp.maximum(length - size + 1, 0), size - 1, axis=1)
    earlier = jnp.arange(slots - size + 1) <= length - size  # n-grams wholly before the next token
    matches = jnp.all(windows[..., :-1] == prefix[:, None, :], axis=-1) & earlier & (length >= size - 1)
    rows = jnp.arange(tokens.shape[0])[:, None]
    banned = jnp.zeros(logits.shape, bool).at[rows, windows[..., -1]].max(matches)
    return jnp.where(banned, -jnp.inf, logits)


def adjust_logits(
    logits: jax.Array,
    tokens: jax.Array,
    slot_mask: jax.Array,
    length: jax.Array,
    repetition_penalty: jax.Array,
    use_repetition_penalty: bool,
    no_repeat_ngram_size: int,
) -> jax.Array:
    """The logits processors, in Hugging Face's order (the sampling warpers come after)."""
    if use_repetition_penalty:
        logits = penalise_repetition(logits, tokens, slot_mask, length, repetition_penalty)
    if no_repeat_ngram_size:
        logits = ban_repeated_ngrams(logits, tokens, length, no_repeat_ngram_size)
    return logits
