"""The predict CLI: a model fine-tuned on an image folder names its classes; converted ImageNet
weights rank classes as the PyTorch model does; each wrong input is one line."""

import json

import jax
import numpy as np
import pytest
import timm
import torch
from PIL import Image

from megathread_jax import checkpoints, models, predict
from megathread_jax.convert.__main__ import main as convert_main
from megathread_jax.data import augment, image_folder
from tests.data.test_image_folder import CLASSES, make_folder
from tests.test_main import run_main


def test_fine_tune_on_a_folder_then_predict_names_its_classes(tmp_path, capsys):
    images = make_folder(tmp_path / "my images", per_class=8)
    workdir = tmp_path / "run"
    run = run_main(
        "--config=configs/mobilenetv2.py:demo",
        f"--workdir={workdir}",
        "--config.data.name=image_folder",
        f"--config.data.path={images}",
        "--config.data.val_fraction=0.25",
        "--config.data.image_size=0",
        "--config.num_epochs=2",
        "--config.batch_size=6",
        "--config.eval_batch_size=6",
        "--config.grad_accum_steps=2",
        "--config.freeze=features.[0-6]",
        f"--config.compilation_cache_dir={tmp_path / 'xla'}",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"image folder {images}: 18 train / 6 val examples" in run.stdout
    meta = checkpoints.read_meta(workdir / "weights")
    assert meta["class_names"] == sorted(CLASSES) and meta["preprocess"]["image_size"] == 64

    red = images / "red things"
    assert predict.main(["--checkpoint", str(workdir), str(red), str(images / "grün" / "0.jpg"), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in results] == [*map(str, sorted(red.iterdir())), str(images / "grün" / "0.jpg")]
    for result in results:
        assert [name for name, _ in result["top_k"]] != [] and len(result["top_k"]) == 3  # 3 classes: top-3
        assert {name for name, _ in result["top_k"]} == set(CLASSES)
        probabilities = [p for _, p in result["top_k"]]
        assert probabilities == sorted(probabilities, reverse=True) and abs(sum(probabilities) - 1) < 1e-4

    assert predict.main(["--checkpoint", str(workdir), str(red / "0.jpg"), "--top-k", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{red / '0.jpg'}: ") and line.endswith("%") and line.count("%") == 1


def test_converted_imagenet_weights_rank_classes_as_timm_does(tmp_path):
    torch.manual_seed(0)
    reference = timm.create_model("mobilevit_xxs", num_classes=1000).eval()
    torch.save(reference.state_dict(), tmp_path / "timm.pth")
    weights = tmp_path / "flax"
    command = ["--model", "mobilevit_xxs", "--source", "timm", "--weights", str(tmp_path / "timm.pth")]
    assert convert_main([*command, "--out", str(weights)]) == 0
    rng = np.random.default_rng(0)
    paths = []
    for i, (height, width) in enumerate([(300, 260), (200, 410), (256, 256)]):
        paths.append(tmp_path / f"photo{i}.png")
        Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8)).save(paths[-1])

    results = predict.classify(weights, paths, top_k=5)

    prep = checkpoints.read_meta(weights)["preprocess"]
    decoded = np.stack([image_folder.decode_image(p, prep["image_size"]) for p in paths])
    inputs = augment.eval_preprocess(decoded, resolution=prep["resolution"], mean=prep["mean"], std=prep["std"])
    with torch.no_grad():
        logits = reference(torch.from_numpy(np.asarray(inputs)).permute(0, 3, 1, 2)).numpy()
    names = checkpoints.read_meta(weights)["class_names"]
    assert len(names) == 1000 and names[0] == "tench"
    for result, row in zip(results, logits, strict=True):
        assert [name for name, _ in result["top_k"]][0] == names[int(np.argmax(row))]
        expected = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        np.testing.assert_allclose([p for _, p in result["top_k"]], np.sort(expected)[::-1][:5], atol=1e-4)


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    directory = tmp_path_factory.mktemp("weights")
    model = models.create("mobilevit_xxs", num_classes=3)
    meta = checkpoints.weights_meta(
        "mobilevit_xxs",
        model,
        class_names=["a", "b", "c"],
        preprocess={"image_size": 32, "resolution": 32, "mean": (0, 0, 0), "std": (1, 1, 1)},
    )
    checkpoints.save_weights(directory, model, meta)
    return directory


@pytest.mark.parametrize(
    ("make_input", "extra", "code", "message"),
    [
        (lambda d: d / "missing.jpg", [], 1, "missing.jpg does not exist"),
        (lambda d: (d / "bad.png").write_bytes(b"nope") and d / "bad.png", [], 1, "bad.png is unreadable"),
        (lambda d: (d / "empty").mkdir() or d / "empty", [], 1, "holds no images"),
        (lambda d: d / "x.png", ["--top-k", "4"], 2, "--top-k 4 is not valid: the model has 3 classes"),
    ],
)
def test_each_wrong_input_is_one_line(tmp_path, capsys, small_weights, make_input, extra, code, message):
    Image.new("RGB", (40, 40)).save(tmp_path / "x.png")
    target = make_input(tmp_path)
    assert predict.main(["--checkpoint", str(small_weights), str(target), *extra]) == code
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and captured.err.count("\n") == 1


def test_a_language_model_checkpoint_is_refused(tmp_path, capsys):
    model = models.create("gpt2", n_layer=1, n_head=2, n_embd=16, vocab_size=32, n_positions=8)
    checkpoints.save_weights(tmp_path / "gpt2", model, checkpoints.weights_meta("gpt2", model))
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    assert predict.main(["--checkpoint", str(tmp_path / "gpt2"), str(tmp_path / "x.png")]) == 2
    assert "a language model: predict classifies images" in capsys.readouterr().err


def test_one_compilation_serves_any_number_of_images(tmp_path, small_weights, monkeypatch):
    for i in range(3):
        Image.new("RGB", (20 + i, 30)).save(tmp_path / f"{i}.png")
    monkeypatch.setattr(predict, "BATCH_SIZE", 2)  # 3 images: a full and a padded batch
    compiled = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **kwargs: (
            compiled.append(kwargs.get("fun_name")) if event == "/jax/core/compile/backend_compile_duration" else None
        )
    )
    assert len(predict.classify(small_weights, [tmp_path], top_k=2)) == 3
    assert compiled.count("jit(probabilities)") == 1
