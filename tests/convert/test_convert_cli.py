"""Weight conversion: the CLI both ways, and clear errors for weights of another architecture."""

import numpy as np
import pytest
import timm
import torch

from megathread_jax import checkpoints, convert, models
from megathread_jax.convert.__main__ import main as convert_main
from tests.conftest import nchw_to_nhwc, randomise_batchnorm, run_flax


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory):
    reference = randomise_batchnorm(timm.create_model("mobilevit_xxs", num_classes=1000)).eval()
    path = tmp_path_factory.mktemp("weights") / "mobilevit_xxs.pth"
    torch.save(reference.state_dict(), path)
    return reference, path


def test_cli_writes_weights_the_trainer_loads(timm_weights, tmp_path):
    reference, path = timm_weights
    out = tmp_path / "flax"
    assert (
        convert_main(["--model", "mobilevit_xxs", "--source", "timm", "--weights", str(path), "--out", str(out)]) == 0
    )
    # The trainer's path: a fresh 200-class model takes every array but the head.
    model = models.create("mobilevit_xxs", num_classes=200, seed=3)
    head_before = np.asarray(model.head.fc.kernel[...]).copy()
    copied = checkpoints.load_weights_into(model, "mobilevit_xxs", out, skip_prefixes=("head.fc",))
    assert copied == len(reference.state_dict()) - 32 - 2  # minus num_batches_tracked and the head
    np.testing.assert_array_equal(np.asarray(model.head.fc.kernel[...]), head_before)
    np.testing.assert_array_equal(
        np.asarray(model.stem.conv.kernel[...]), reference.stem.conv.weight.detach().numpy().transpose(2, 3, 1, 0)
    )
    # The whole model, head included, reproduces timm.
    full = models.create("mobilevit_xxs", num_classes=1000)
    checkpoints.load_weights_into(full, "mobilevit_xxs", out)
    full.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x).numpy()
    np.testing.assert_allclose(run_flax(full, nchw_to_nhwc(x)), expected, atol=1e-4)


def test_cli_back_to_torch(timm_weights, tmp_path):
    reference, path = timm_weights
    flax_dir, out = tmp_path / "flax", tmp_path / "back.safetensors"
    assert (
        convert_main(["--model", "mobilevit_xxs", "--source", "timm", "--weights", str(path), "--out", str(flax_dir)])
        == 0
    )
    assert (
        convert_main(["--model", "mobilevit_xxs", "--target", "timm", "--from-flax", str(flax_dir), "--out", str(out)])
        == 0
    )
    from safetensors.torch import load_file

    back = load_file(str(out))
    for key, value in reference.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(back[key], value), key

    # timm itself loads the export as a model's pretrained weights (offline: the file is local).
    num_classes = reference.num_classes
    overlay = {"file": str(out), "num_classes": num_classes}
    loaded = timm.create_model(
        "mobilevit_xxs", pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay
    )
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_weights_of_another_architecture_name_the_keys():
    other = timm.create_model("mobilevit_xs", num_classes=10).state_dict()
    with pytest.raises(convert.WeightMismatchError, match=r"stem\.conv\.weight|stages\.0\.0\.conv1_1x1\.conv\.weight"):
        convert.from_torch("mobilevit_xxs", other, source="timm")


def test_missing_and_unexpected_keys_are_named():
    state_dict = timm.create_model("mobilevit_xxs", num_classes=10).state_dict()
    del state_dict["final_conv.bn.running_var"]
    state_dict["stages.9.0.conv.weight"] = torch.zeros(1)
    with pytest.raises(convert.WeightMismatchError) as info:
        convert.from_torch("mobilevit_xxs", state_dict, source="timm")
    assert "missing keys: final_conv.bn.running_var" in str(info.value)
    assert "unexpected keys: stages.9.0.conv.weight" in str(info.value)


def test_cli_reports_a_missing_file_without_traceback(tmp_path, capsys):
    code = convert_main(
        [
            "--model",
            "mobilevit_xxs",
            "--source",
            "timm",
            "--weights",
            str(tmp_path / "nope.pth"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 1
    assert "does not exist" in capsys.readouterr().err


def test_offline_fetch_says_how_to_convert_a_local_file(tmp_path, monkeypatch):
    from megathread_jax import checkpoints
    from megathread_jax.convert import mobilevit as mobilevit_family
    from megathread_jax.errors import WeightsNotFoundError

    def offline(name, source, tag=None):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(mobilevit_family, "fetch", offline)
    monkeypatch.setattr(checkpoints, "WEIGHTS_CACHE", tmp_path)
    with pytest.raises(WeightsNotFoundError) as info:
        checkpoints.pretrained_dir("mobilevit_xxs", "timm", then="Then train from it with --config.init_from=DIR")
    message = str(info.value)
    assert "OSError: Temporary failure in name resolution" in message
    assert "--weights FILE" in message and message.endswith("Then train from it with --config.init_from=DIR")
    assert not list(tmp_path.iterdir())  # nothing half-written in the cache


def test_gpt2_cli_round_trip_through_a_flax_directory(tmp_path):
    from safetensors.torch import load_file
    from transformers import GPT2Config, GPT2LMHeadModel

    reference = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=300, n_positions=32, bos_token_id=299, eos_token_id=299)
    )
    torch.save(reference.state_dict(), tmp_path / "gpt2.pth")
    flax_dir = tmp_path / "flax"
    assert (
        convert_main(
            [
                "--model",
                "gpt2",
                "--source",
                "hf",
                "--weights",
                str(tmp_path / "gpt2.pth"),
                "--n-head",
                "4",
                "--out",
                str(flax_dir),
            ]
        )
        == 0
    )
    model, meta = checkpoints.model_from_weights(flax_dir)
    assert meta["model_kwargs"]["n_layer"] == 2 and model.config.vocab_size == 300
    ids = np.arange(10)[None]
    with torch.no_grad():
        expected = reference.eval()(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(model(ids)), expected, atol=1e-4, rtol=0)

    out = tmp_path / "back.safetensors"
    assert convert_main(["--model", "gpt2", "--target", "hf", "--from-flax", str(flax_dir), "--out", str(out)]) == 0
    back = load_file(str(out))
    for key, value in reference.state_dict().items():
        assert torch.equal(back[key], value), key


def test_gpt2_weights_given_for_an_image_model_are_refused(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.save(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2)).state_dict(), tmp_path / "gpt2.pth")
    code = convert_main(
        [
            "--model",
            "mobilevit_xxs",
            "--source",
            "timm",
            "--weights",
            str(tmp_path / "gpt2.pth"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 1
    assert "head.fc.weight" in capsys.readouterr().err and not (tmp_path / "out").exists()
