"""Beam search as Hugging Face's vectorised `_beam_search` does it, step for step, in one compiled
`jax.lax.while_loop` over a key/value cache whose rows follow the beams."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from megathread_jax.logits_processors import adjust_logits

# What Hugging Face adds to a score to rule its candidate out.
_RULED_OUT = -1.0e9


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "num_beams", "early_stopping", "use_repetition_penalty", "no_repeat_ngram_size"),
)
def beam_search_loop(
    graphdef,
    state,
    tokens,
    slot_mask,
    prompt_length,
    max_new_tokens,
    length_divisors,
    length_penalty,
    eos_token_id,
    repetition_penalty,
    *,
    num_beams,
    early_stopping,
    use_repetition_penalty,
    no_repeat_ngram_size,
):
    """Hugging Face's vectorised beam search, step for step. `tokens` and `slot_mask` are (B, S),
    one row per prompt; `length_divisors[n]` is n ** length_penalty (computed on the host in
    double precision, as Python computes it for Hugging Face)."""
    model = nnx.merge(graphdef, state)
    model.eval()
    batch, slots = tokens.shape
    k, keep = num_beams, 2 * num_beams
    max_length = prompt_length + max_new_tokens
    beam_rows = lambda x: jnp.repeat(x, k, axis=0)  # noqa: E731  (B, ...) -> (B * K, ...)
    per_prompt = lambda x: x.reshape(batch, k, *x.shape[1:])  # noqa: E731
    slot_mask = beam_rows(slot_mask)
    positions = jnp.clip(jnp.cumsum(slot_mask, axis=-1) - 1, 0, model.config.n_positions - 1)
    flat_tokens = beam_rows(tokens)
    logits, cache = model.decode(flat_tokens, positions, slot_mask, model.init_cache(batch * k, slots), jnp.int32(0))
    next_logits = jax.lax.dynamic_index_in_dim(logits, prompt_length - 1, axis=1, keepdims=False)

    def gather(x, index):  # (B, N, ...) by (B, M) -> (B, M, ...)
        return jnp.take_along_axis(x, index.reshape(*index.shape, *(1,) * (x.ndim - 2)), axis=1)

    def step(carry):
        (length, running, running_scores, finished, finished_scores, is_done, improvable, _, cache, logits) = carry
        flat_running = running.reshape(batch * k, slots)
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        log_probs = adjust_logits(
            log_probs,
            flat_running,
            slot_mask,
            length,
            repetition_penalty,
            use_repetition_penalty,
            no_repeat_ngram_size,
        )
        vocab = log_probs.shape[-1]
        totals = (per_prompt(log_probs) + running_scores[:, :, None]).reshape(batch, k * vocab)
        top_scores, top_index = jax.lax.top_k(totals, keep)
        source_beam, new_token = top_index // vocab, top_index % vocab
        candidates = gather(running, source_beam)
        candidates = jax.lax.dynamic_update_slice_in_dim(candidates, new_token[..., None], length, axis=2)
        hits = (new_token == eos_token_id) | (length + 1 >= max_length)

        # The best candidates that go on.
        going_on = top_scores + hits * _RULED_OUT
        chosen = jax.lax.top_k(going_on, k)[1]
        running, running_scores = gather(candidates, chosen), gather(going_on, chosen)

        # The best finished hypotheses so far, of the top K candidates only.
        just_finished = hits & (jnp.arange(keep) < k)[None]
        scores = top_scores / length_divisors[length + 1 - prompt_length]
        full = jnp.all(is_done, axis=-1, keepdims=True) & (early_stopping is True)
        scores = scores + full * _RULED_OUT + (~improvable) * _RULED_OUT + (~just_finished) * _RULED_OUT
        merged_scores = jnp.concatenate([finished_scores, scores], axis=1)
        best = jax.lax.top_k(merged_scores, k)[1]
        finished = gather(jnp.concatenate([finished, candidates], axis=1), best)
        finished_scores = gather(merged_scores, best)
        is_done = gather(jnp.concatenate([is_done, just_finished], axis=1), best)

        # The cache follows the beams that go on.
        origin = (gather(source_beam, chosen) + jnp.arange(batch)[:, None] * k).reshape(-1)
        cache = jax.tree.map(lambda x: jnp.take(x, origin, axis=0), cache)
        new_tokens = jax.lax.dynamic_slice_in_dim(running.reshape(batch * k, slots), length, 1, axis=1)
        position = jax.lax.dynamic_slice_in_dim(positions, length, 1, axis=1)
        logits, cache = model.decode(new_tokens, position, slot_mask, cache, length)
        length = length + 1

        if early_stopping == "never":
            hypothetical = jnp.where(length_penalty > 0, max_length, length) - prompt_length
        else:
            hypothetical = length - prompt_length
        best_running = running_scores[:, :1] / length_divisors[hypothetical]
        worst_finished = jnp.where(is_done, jnp.min(finished_scores, axis=1, keepdims=True), _RULED_OUT)
        improvable = improvable & jnp.any(best_running > worst_finished, axis=-1, keepdims=True)
        return (
            length,
            running,
            running_scores,
            finished,
            finished_scores,
            is_done,
            improvable,
            hits,
            cache,
            logits[:, 0],
        )

    def keep_going(carry):
        _, _, _, _, _, is_done, improvable, hits, _, _ = carry
        open_beam = ~(jnp.all(is_done) & (early_stopping is True))
        return jnp.any(improvable) & open_beam & ~jnp.all(hits)

    running = per_prompt(flat_tokens)
    carry = (
        prompt_length,
        running,
        jnp.zeros((batch, k), jnp.float32).at[:, 1:].set(_RULED_OUT),
        running,
        jnp.full((batch, k), _RULED_OUT, jnp.float32),
        jnp.zeros((batch, k), bool),
        jnp.ones((batch, 1), bool),
        jnp.zeros((batch, keep), bool),
        cache,
        next_logits,
    )
    _, _, _, finished, _, _, _, _, _, _ = jax.lax.while_loop(keep_going, step, carry)
    return finished[:, 0]
