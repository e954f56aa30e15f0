"""Generation: token-identical to Hugging Face greedy decoding, reproducible sampling, one compilation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from megathread_jax import convert, generate, models

CONFIG = dict(
    n_layer=2,
    n_embd=64,
    n_head=4,
    vocab_size=500,
    n_positions=128,
    bos_token_id=499,
    eos_token_id=499,
    initializer_range=0.3,
)


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    reference = GPT2LMHeadModel(GPT2Config(**CONFIG)).eval()
    model = convert.from_torch("gpt2", reference.state_dict(), source="hf", n_head=4)
    return reference, model


def _prompts():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 499, n).tolist() for n in (7, 3, 12)]


def _hugging_face_greedy(reference, ids, mask, **kwargs) -> np.ndarray:
    """Hugging Face's `generate` without sampling (greedy, or beam search with `num_beams`)."""
    with torch.no_grad():
        return reference.generate(
            torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long(), do_sample=False, **kwargs
        ).numpy()


def test_greedy_matches_hugging_face_for_prompts_of_different_lengths(pair):
    reference, model = pair
    ids, mask = generate.left_pad(_prompts(), pad_token_id=0)
    ours = generate.generate(model, ids, attention_mask=mask, max_new_tokens=32, eos_token_id=499, pad_token_id=0)
    theirs = _hugging_face_greedy(reference, ids, mask, max_new_tokens=32, eos_token_id=499, pad_token_id=0)
    assert ours.shape == (3, 12 + 32)
    np.testing.assert_array_equal(ours[:, : theirs.shape[1]], theirs)
    assert (ours[:, theirs.shape[1] :] == 0).all()  # HF stops early when every row ended: padding


@pytest.mark.parametrize("repetition_penalty, no_repeat_ngram_size", [(1.3, 0), (0.8, 0), (1.0, 2), (1.0, 3), (1.5, 2)])
def test_repetition_controls_match_hugging_face_for_left_padded_prompts(pair, repetition_penalty, no_repeat_ngram_size):
    reference, model = pair
    ids, mask = generate.left_pad(_prompts(), pad_token_id=0)
    controls = dict(repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size)
    ours = generate.generate(
        model, ids, attention_mask=mask, max_new_tokens=32, eos_token_id=499, pad_token_id=0, **controls
    )
    theirs = _hugging_face_greedy(reference, ids, mask, max_new_tokens=32, eos_token_id=499, pad_token_id=0, **controls)
    np.testing.assert_array_equal(ours[:, : theirs.shape[1]], theirs)
    plain = generate.generate(model, ids, attention_mask=mask, max_new_tokens=32, eos_token_id=499, pad_token_id=0)
    assert not np.array_equal(ours, plain)  # the controls changed what greedy decoding picks


@pytest.fixture(scope="module")
def beam_eos(pair):
    """An end-of-sequence token that beams reach early, so hypotheses finish before the last step."""
    _, model = pair
    ids, mask = generate.left_pad(_prompts(), pad_token_id=7)
    beams = generate.generate(model, ids, attention_mask=mask, max_new_tokens=20, num_beams=3, pad_token_id=7)
    return int(beams[1, 15])


@pytest.mark.parametrize(
    "early_stopping, length_penalty, repetition_penalty",
    [(False, 1.0, 1.0), (True, 1.0, 1.0), (False, 2.0, 1.0), ("never", 0.5, 1.0), (True, -1.0, 1.3)],
)
def test_beam_search_matches_hugging_face_for_left_padded_prompts(
    pair, beam_eos, early_stopping, length_penalty, repetition_penalty
):
    reference, model = pair
    ids, mask = generate.left_pad(_prompts(), pad_token_id=7)
    kwargs = dict(
        num_beams=4,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        repetition_penalty=repetition_penalty,
        eos_token_id=beam_eos,
        pad_token_id=7,
        max_new_tokens=24,
    )
    ours = generate.generate(model, ids, attention_mask=mask, **kwargs)
    theirs = _hugging_face_greedy(reference, ids, mask, **kwargs)
    assert (theirs[:, 12:] == beam_eos).any()  # some hypothesis ended before the last step
    np.testing.assert_array_equal(ours[:, : theirs.shape[1]], theirs)
    assert (ours[:, theirs.shape[1] :] == 7).all()


def test_new_penalty_values_and_beam_calls_of_the_same_shapes_compile_nothing(pair):
    _, model = pair
    ids, mask = generate.left_pad(_prompts(), pad_token_id=0)
    generate.generate(model, ids, attention_mask=mask, max_new_tokens=10, repetition_penalty=1.2)
    compilations = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compilations.append(event)

    generate.generate(model, ids, attention_mask=mask, max_new_tokens=10, num_beams=3)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        generate.generate(model, ids, attention_mask=mask, max_new_tokens=10, repetition_penalty=1.7)
        generate.generate(model, ids, attention_mask=mask, max_new_tokens=9, num_beams=3, length_penalty=0.4)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compilations == []


def test_eos_stops_a_row_and_pads_after_it(pair):
    _, model = pair
    ids, mask = generate.left_pad(_prompts(), pad_token_id=0)
    greedy = generate.generate(model, ids, attention_mask=mask, max_new_tokens=8)
    eos = int(greedy[0, 12 + 2])  # make row 0's third new token the "end of sequence"
    out = generate.generate(model, ids, attention_mask=mask, max_new_tokens=8, eos_token_id=eos, pad_token_id=7)
    first_eos = 12 + int(np.argmax(greedy[0, 12:] == eos))
    np.testing.assert_array_equal(out[0, : first_eos + 1], greedy[0, : first_eos + 1])
    assert (out[0, first_eos + 1 :] == 7).all()


def test_sampling_is_reproducible_and_top_k_1_is_greedy(pair):
    _, model = pair
    ids, mask = generate.left_pad(_prompts(), pad_token_id=0)
    kwargs = dict(attention_mask=mask, max_new_tokens=16, do_sample=True, temperature=1.5)
    a = generate.generate(model, ids, seed=3, **kwargs)
    b = generate.generate(model, ids, seed=3, **kwargs)
    c = generate.generate(model, ids, seed=4, **kwargs)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    greedy = generate.generate(model, ids, attention_mask=mask, max_new_tokens=16)
    np.testing.assert_array_equal(generate.generate(model, ids, seed=5, top_k=1, **kwargs), greedy)


def test_top_p_keeps_exactly_the_nucleus():
    probs = np.array([0.05, 0.5, 0.15, 0.3])
    logits = jnp.log(jnp.asarray(probs))[None]
    kept = lambda p: set(np.flatnonzero(np.isfinite(np.asarray(generate.filter_logits(logits, top_p=p)[0]))))  # noqa: E731
    assert kept(0.45) == {1}
    assert kept(0.75) == {1, 3}
    assert kept(0.85) == {1, 3, 2}
    assert kept(1.0) == {0, 1, 2, 3}
    top2 = np.asarray(generate.filter_logits(logits, top_k=2)[0])
    assert set(np.flatnonzero(np.isfinite(top2))) == {1, 3}


def test_second_call_with_the_same_shapes_compiles_nothing(pair):
    _, model = pair
    compilations = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compilations.append(event)

    ids, mask = generate.left_pad(_prompts(), pad_token_id=0)
    generate.generate(model, ids, attention_mask=mask, max_new_tokens=10)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        generate.generate(model, ids, attention_mask=mask, max_new_tokens=10)
        # another prompt length and token count in the same cache bucket (16 + 10 <= 32) too
        generate.generate(model, ids[:, 4:], attention_mask=mask[:, 4:], max_new_tokens=9)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compilations == []


def test_streaming_delivers_every_new_token_in_order(pair):
    _, model = pair
    ids, mask = generate.left_pad(_prompts(), pad_token_id=0)
    seen = []
    out = generate.generate(model, ids, attention_mask=mask, max_new_tokens=6, on_token=seen.append)
    np.testing.assert_array_equal(np.stack(seen, axis=1), out[:, 12:])


def test_bad_requests_are_refused(pair):
    _, model = pair
    with pytest.raises(ValueError, match="left-padded"):
        generate.generate(model, np.ones((1, 4), int), attention_mask=np.array([[1, 1, 1, 0]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="exceeds"):
        generate.generate(model, np.ones((1, 100), int), max_new_tokens=29)
    with pytest.raises(ValueError, match="temperature"):
        generate.generate(model, np.ones((1, 4), int), max_new_tokens=2, do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="repetition_penalty must be > 0"):
        generate.generate(model, np.ones((1, 4), int), max_new_tokens=2, repetition_penalty=0.0)
    with pytest.raises(ValueError, match="no_repeat_ngram_size must be >= 0"):
        generate.generate(model, np.ones((1, 4), int), max_new_tokens=2, no_repeat_ngram_size=-1)
    with pytest.raises(ValueError, match="leave out do_sample"):
        generate.generate(model, np.ones((1, 4), int), max_new_tokens=2, num_beams=2, do_sample=True)
    with pytest.raises(ValueError, match="early_stopping must be True, False or 'never'"):
        generate.generate(model, np.ones((1, 4), int), max_new_tokens=2, num_beams=2, early_stopping="soon")
    with pytest.raises(ValueError, match="num_beams must be >= 1"):
        generate.generate(model, np.ones((1, 4), int), max_new_tokens=2, num_beams=0)


def test_generation_runs_in_bfloat16():
    model = models.create("gpt2", n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=32, dtype="bfloat16")
    out = generate.generate(model, np.ones((2, 3), int), max_new_tokens=4)
    assert out.shape == (2, 7) and (out < 100).all()
