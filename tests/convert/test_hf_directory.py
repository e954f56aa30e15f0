"""GPT-2 to and from Hugging Face model directories: `from_pretrained` and `pipeline` open what
`convert --target hf` writes, and a hub-layout directory comes in and goes out unchanged."""

import json

import numpy as np
import pytest
import timm
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


def test_mobilevit_goes_to_a_directory_that_transformers_classifies_with_and_comes_back_exact(tmp_path):
    from PIL import Image
    from transformers import MobileViTForImageClassification

    from megathread_jax import convert
    from tests.conftest import nchw_to_nhwc, randomise_batchnorm, run_flax

    names = ["cat", "dog", "bird"]
    reference = randomise_batchnorm(timm.create_model("mobilevit_xxs", num_classes=3)).eval()
    model = convert.from_torch("mobilevit_xxs", reference.state_dict(), source="timm")
    prep = {"image_size": 64, "resolution": 64, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}
    meta = checkpoints.weights_meta("mobilevit_xxs", model, class_names=names, preprocess=prep)
    checkpoints.save_weights(tmp_path / "flax", model, meta)

    hf_dir = tmp_path / "hf"
    args = ["--model", "mobilevit_xxs", "--target", "hf", "--from-flax", str(tmp_path / "flax"), "--out", str(hf_dir)]
    assert convert_main(args) == 0
    exported = MobileViTForImageClassification.from_pretrained(hf_dir).eval()
    assert exported.config.id2label == dict(enumerate(names))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        hf_logits = exported(pixel_values=x).logits.numpy()
    np.testing.assert_allclose(hf_logits, run_flax(model, nchw_to_nhwc(x)), atol=1e-4, rtol=0)

    classify = pipeline("image-classification", model=str(hf_dir), device="cpu")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8))
    assert {row["label"] for row in classify(image, top_k=3)} == set(names)

    # Hugging Face directory -> Flax -> Hugging Face directory: the same tensors, the same labels.
    args = ["--model", "mobilevit_xxs", "--source", "hf", "--weights", str(hf_dir), "--out", str(tmp_path / "back")]
    assert convert_main(args) == 0
    assert checkpoints.read_meta(tmp_path / "back")["class_names"] == names
    again = tmp_path / "hf_again"
    args = ["--model", "mobilevit_xxs", "--target", "hf", "--from-flax", str(tmp_path / "back"), "--out", str(again)]
    assert convert_main(args) == 0
    first, second = exported.state_dict(), MobileViTForImageClassification.from_pretrained(again).state_dict()
    assert first.keys() == second.keys()
    for key, value in first.items():
        assert torch.equal(value, second[key]), key


def test_mobilenet_v2_has_no_hugging_face_directory_and_says_what_to_write(tmp_path, capsys):
    model = models.create("mobilenet_v2", num_classes=3)
    checkpoints.save_weights(tmp_path / "flax", model, checkpoints.weights_meta("mobilenet_v2", model))
    args = [
        "--model",
        "mobilenet_v2",
        "--target",
        "hf",
        "--from-flax",
        str(tmp_path / "flax"),
        "--out",
        str(tmp_path / "hf"),
    ]
    assert convert_main(args) == 2
    assert "no Hugging Face model for mobilenet_v2" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize(
    "config_text, words", [("{}", "has a config.json but no weights"), ("{not json", "is not valid JSON")]
)
def test_a_broken_hugging_face_directory_is_named_and_nothing_is_written(tmp_path, capsys, config_text, words):
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "config.json").write_text(config_text)
    args = ["--model", "gpt2", "--source", "hf", "--weights", str(tmp_path / "hub"), "--out", str(tmp_path / "flax")]
    assert convert_main(args) == 1
    error = capsys.readouterr().err
    assert words in error and "Traceback" not in error and error.count("\n") == 1
    assert not (tmp_path / "flax").exists()
