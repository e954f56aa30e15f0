"""GPT-2 to and from Hugging Face model directories: `from_pretrained` and `pipeline` open what
`convert --target hf` writes, and a hub-layout directory comes in and goes out unchanged."""

import json

import numpy as np
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, pipeline

from megathread_jax import checkpoints, models
from megathread_jax.convert.__main__ import main as convert_main

TEXT = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog"] * 20


def _tokenizer() -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer trained here (no tokenizer can be downloaded)."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXT, vocab_size=280, min_frequency=1, special_tokens=["<|endoftext|>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )


def test_a_hub_directory_comes_in_and_goes_back_out_as_one_that_transformers_opens(tmp_path):
    tokenizer = _tokenizer()
    eos = tokenizer.eos_token_id
    config = GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=300, n_positions=64, bos_token_id=eos, eos_token_id=eos
    )
    torch.manual_seed(0)
    reference = GPT2LMHeadModel(config).eval()
    reference.save_pretrained(tmp_path / "hub")
    tokenizer.save_pretrained(tmp_path / "hub")

    flax_dir, hf_dir = tmp_path / "flax", tmp_path / "hf"
    assert (
        convert_main(["--model", "gpt2", "--source", "hf", "--weights", str(tmp_path / "hub"), "--out", str(flax_dir)])
        == 0
    )
    model, meta = checkpoints.model_from_weights(flax_dir)
    assert meta["model_kwargs"]["n_head"] == 4 and meta["tokenizer"] == str(tmp_path / "hub")
    ids = np.asarray([tokenizer.encode("the cat sat on the mat")])
    with torch.no_grad():
        expected = reference(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(model(ids)), expected, atol=1e-4, rtol=0)

    assert convert_main(["--model", "gpt2", "--target", "hf", "--from-flax", str(flax_dir), "--out", str(hf_dir)]) == 0
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
        assert (hf_dir / name).is_file(), name
    assert json.loads((hf_dir / "config.json").read_text())["n_head"] == 4
    exported = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    original = reference.state_dict()
    for key, value in exported.state_dict().items():
        assert torch.equal(value, original[key]), key
    with torch.no_grad():
        np.testing.assert_allclose(
            exported(torch.from_numpy(ids)).logits.numpy(), np.asarray(model(ids)), atol=1e-4, rtol=0
        )

    generator = pipeline("text-generation", model=str(hf_dir), device="cpu")
    [out] = generator("the cat", max_new_tokens=8, do_sample=False)
    assert out["generated_text"].startswith("the cat") and len(out["generated_text"]) > len("the cat")


def test_a_byte_level_model_is_exported_without_a_tokenizer_and_says_so(tmp_path, capsys):
    model = models.create("gpt2", n_layer=1, n_embd=32, n_head=2, vocab_size=257, n_positions=16)
    checkpoints.save_weights(tmp_path / "flax", model, checkpoints.weights_meta("gpt2", model, tokenizer="bytes"))
    out = tmp_path / "hf"
    assert (
        convert_main(["--model", "gpt2", "--target", "hf", "--from-flax", str(tmp_path / "flax"), "--out", str(out)])
        == 0
    )
    assert "no tokenizer (the weights' vocabulary is byte-level" in capsys.readouterr().out
    assert GPT2LMHeadModel.from_pretrained(out).config.vocab_size == 257
    assert not (out / "tokenizer.json").exists()
