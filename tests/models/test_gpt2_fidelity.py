"""GPT-2 against Hugging Face's GPT2LMHeadModel with random weights."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from megathread_jax import convert, tasks

SMALL = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=64, bos_token_id=999, eos_token_id=999)


def _reference(**config) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**config, attn_implementation="eager")).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases (HF initialises them to 1 and 0)
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn_like(p))
    return model


def _convert(reference: GPT2LMHeadModel):
    return convert.from_torch("gpt2", reference.state_dict(), source="hf", n_head=reference.config.n_head)


def _ids(batch: int, length: int, vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (batch, length))


@pytest.mark.parametrize("config", [{}, SMALL], ids=["124M", "2-layer"])
def test_logits_and_loss_match_hugging_face(config):
    reference = _reference(**config)
    model = _convert(reference)
    ids = _ids(2, 24, reference.config.vocab_size)
    with torch.no_grad():
        out = reference(torch.from_numpy(ids), labels=torch.from_numpy(ids))
    logits = np.asarray(model(jnp.asarray(ids)))
    assert logits.shape == (2, 24, reference.config.vocab_size)
    np.testing.assert_allclose(logits, out.logits.numpy(), atol=1e-4, rtol=0)
    loss = tasks.next_token_loss(jnp.asarray(logits), jnp.asarray(ids))
    np.testing.assert_allclose(float(loss), float(out.loss), rtol=1e-5)


def test_left_padding_with_attention_mask_matches_hugging_face():
    reference = _reference(**SMALL)
    model = _convert(reference)
    ids = _ids(3, 12, SMALL["vocab_size"])
    mask = np.ones_like(ids)
    mask[0, :5] = 0
    mask[1, :2] = 0
    positions = np.maximum(mask.cumsum(-1) - 1, 0)  # what generation uses
    for position_ids in (None, positions):
        with torch.no_grad():
            expected = reference(
                torch.from_numpy(ids),
                attention_mask=torch.from_numpy(mask),
                position_ids=None if position_ids is None else torch.from_numpy(position_ids),
            ).logits.numpy()
        got = np.asarray(
            model(jnp.asarray(ids), jnp.asarray(mask), None if position_ids is None else jnp.asarray(position_ids))
        )
        real = mask.astype(bool)  # padded positions' outputs are undefined in both
        np.testing.assert_allclose(got[real], expected[real], atol=1e-4, rtol=0)


def test_attention_weights_match_hugging_face():
    reference = _reference(**SMALL)
    model = _convert(reference)
    ids = _ids(2, 10, SMALL["vocab_size"])
    with torch.no_grad():
        expected = np.stack([a.numpy() for a in reference(torch.from_numpy(ids), output_attentions=True).attentions])
    got = np.asarray(model.attention_weights(jnp.asarray(ids)))
    assert got.shape == (2, 2, 4, 10, 10)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_round_trip_to_hugging_face_is_exact():
    reference = _reference(**SMALL)
    state_dict = reference.state_dict()
    model = _convert(reference)
    assert model.transformer.wte.weight.shape == (1024, 64)  # padded to a multiple of 128 rows
    exported = convert.to_torch("gpt2", model, target="hf")
    assert set(exported) == set(state_dict)
    for key, value in state_dict.items():
        assert torch.equal(exported[key], value), key
    GPT2LMHeadModel(reference.config).load_state_dict(exported, strict=True)


def test_bare_gpt2model_keys_and_buffers_are_accepted():
    reference = _reference(**SMALL)
    bare = {k.removeprefix("transformer."): v for k, v in reference.state_dict().items() if k != "lm_head.weight"}
    bare["h.0.attn.bias"] = torch.ones(1, 1, 64, 64)  # old checkpoints store the causal mask
    model = convert.from_torch("gpt2", bare, source="hf", n_head=4)
    ids = _ids(1, 8, SMALL["vocab_size"])
    with torch.no_grad():
        expected = reference(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), expected, atol=1e-4, rtol=0)


def test_unpublished_width_needs_the_head_count_and_wrong_shapes_are_named():
    state_dict = _reference(**SMALL).state_dict()
    with pytest.raises(convert.WeightMismatchError, match="n_head"):
        convert.from_torch("gpt2", state_dict, source="hf")
    with pytest.raises(convert.WeightMismatchError, match="transformer.wte.weight"):
        convert.from_torch("gpt2", state_dict, source="hf", n_head=4, vocab_size=999)
    with pytest.raises(convert.WeightMismatchError, match="not a GPT-2"):
        convert.from_torch("gpt2", {"conv.weight": np.zeros((1, 1))}, source="hf")
