"""Image folders: every common format and mode decoded alike, the two layouts, the cache, and a
clear error for each kind of bad folder (nothing cached then)."""

import io
import os
import pathlib
import re

import numpy as np
import pytest
from PIL import Image

from megathread_jax.data import image_folder
from megathread_jax.errors import DataNotFoundError

CLASSES = {"red things": (220, 30, 30), "grün": (30, 200, 60), "Äpfel blau": (40, 40, 220)}


def make_folder(root: pathlib.Path, per_class: int = 6, classes=CLASSES) -> pathlib.Path:
    """Noisy colour images of odd sizes, cycling through JPEG, PNG, WebP and BMP."""
    rng = np.random.default_rng(0)
    for name, colour in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (30 + 3 * i, 41, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.{('jpg', 'png', 'webp', 'bmp')[i % 4]}")
    return root


def _decoded(tmp_path, image: Image.Image, name: str, size: int = 8, **save) -> np.ndarray:
    path = tmp_path / name
    image.save(path, **save)
    return image_folder.decode_image(path, size).astype(int)


def test_every_mode_decodes_to_upright_rgb(tmp_path):
    grey = _decoded(tmp_path, Image.new("L", (20, 12), 100), "grey.png")
    assert grey.shape == (8, 8, 3) and (grey == 100).all()
    clear = Image.new("RGBA", (9, 9), (0, 0, 0, 0))
    assert (_decoded(tmp_path, clear, "clear.png") == 255).all()  # transparency over white
    sixteen = Image.fromarray(np.full((10, 10), 32768, np.uint16))
    assert sixteen.mode.startswith("I")
    assert np.abs(_decoded(tmp_path, sixteen, "deep.png") - 128).max() <= 1  # 16-bit scaled, not clipped
    cmyk = _decoded(tmp_path, Image.new("CMYK", (10, 10), (0, 255, 255, 0)), "cmyk.jpg")
    assert cmyk[..., 0].min() > 200 and cmyk[..., 1:].max() < 60  # red
    # A landscape image stored sideways: left half black, right half white once turned upright.
    stored = np.zeros((16, 8), np.uint8)
    stored[:8] = 255  # top half white in the file; EXIF orientation 6 turns it 90 degrees clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = _decoded(tmp_path, Image.fromarray(stored), "turned.jpg", exif=exif, quality=100)
    assert upright[:, :3].max() < 40 and upright[:, 5:].min() > 215


def test_class_folders_split_by_seed_with_names_sorted(tmp_path):
    root = make_folder(tmp_path / "images")
    arrays, names = image_folder.load(root, size=16, val_fraction=0.34)
    assert names == sorted(CLASSES)
    assert arrays["train_images"].shape == (12, 16, 16, 3) and arrays["val_images"].shape == (6, 16, 16, 3)
    assert sorted(np.bincount(arrays["val_labels"])) == [2, 2, 2]
    red = names.index("red things")
    assert arrays["train_images"][arrays["train_labels"] == red][..., 0].mean() > 150
    again, _ = image_folder.load(root, size=16, val_fraction=0.34)
    for key in arrays:
        np.testing.assert_array_equal(again[key], arrays[key])


def test_train_and_val_folders_are_used_as_they_are(tmp_path):
    make_folder(tmp_path / "train", per_class=3)
    make_folder(tmp_path / "val", per_class=1, classes={"grün": (30, 200, 60)})  # a class may lack val images
    arrays, names = image_folder.load(tmp_path, size=8, val_fraction=0.5)
    assert len(arrays["train_labels"]) == 9 and arrays["val_labels"].tolist() == [names.index("grün")]


def test_the_cache_is_read_back_and_rebuilt_when_a_file_changes(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "images", per_class=2)
    image_folder.load(root, size=8, val_fraction=0.5)
    real_decode = image_folder.decode_image

    def no_decoding(path, size):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(image_folder, "decode_image", no_decoding)
    image_folder.load(root, size=8, val_fraction=0.5)

    changed = root / "grün" / "0.jpg"
    Image.new("RGB", (8, 8), (0, 0, 0)).save(changed)
    os.utime(changed, ns=(1, 1))
    decoded = []
    monkeypatch.setattr(
        image_folder, "decode_image", lambda path, size: decoded.append(path) or real_decode(path, size)
    )
    arrays, _ = image_folder.load(root, size=8, val_fraction=0.5)
    assert len(decoded) == 6 and len(list((root / image_folder.CACHE_FOLDER).iterdir())) == 1  # old cache gone
    assert changed in decoded and min(arrays["train_images"].min(), arrays["val_images"].min()) == 0


def _refusal(root: pathlib.Path, val_fraction: float = 0.5) -> str:
    """The message a bad folder is refused with; nothing may have been cached."""
    with pytest.raises(DataNotFoundError) as refused:
        image_folder.load(root, size=8, val_fraction=val_fraction)
    assert not (root / image_folder.CACHE_FOLDER).exists()
    return str(refused.value)


def test_a_missing_folder(tmp_path):
    assert re.search("does not exist .*DIR/train/<class>", _refusal(tmp_path / "nowhere"))


def test_an_unreadable_file_is_named(tmp_path):
    root = make_folder(tmp_path / "images", per_class=2)
    (root / "grün" / "broken.png").write_bytes(b"\x89PNG not really")
    assert re.search(r"broken.png is unreadable .*replace or remove it", _refusal(root))


def test_an_empty_class(tmp_path):
    root = make_folder(tmp_path / "images", per_class=2)
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("not an image")
    assert re.search(r"class folder .*empty holds no images", _refusal(root))


def test_a_validation_class_that_training_lacks(tmp_path):
    make_folder(tmp_path / "train", per_class=1)
    make_folder(tmp_path / "val", per_class=1, classes={**CLASSES, "zebra": (0, 0, 0)})
    assert re.search(r"val has classes that .*train lacks: zebra", _refusal(tmp_path))


def test_fewer_than_two_classes(tmp_path):
    assert re.search(
        r"only the class 'cats'.*two or more", _refusal(make_folder(tmp_path / "one", classes={"cats": (1, 2, 3)}))
    )
    (tmp_path / "none").mkdir()
    assert re.search("no class folders", _refusal(tmp_path / "none"))


def test_a_class_with_one_image_cannot_be_split(tmp_path):
    root = make_folder(tmp_path / "images", per_class=2)
    make_folder(root, per_class=1, classes={"lonely": (9, 9, 9)})
    assert re.search(r"lonely holds one image", _refusal(root))


def test_a_corrupt_cache_is_rebuilt(tmp_path):
    root = make_folder(tmp_path / "images", per_class=2)
    arrays, _ = image_folder.load(root, size=8, val_fraction=0.5)
    (cache,) = (root / image_folder.CACHE_FOLDER).iterdir()
    (cache / "train_images.npy").write_bytes(io.BytesIO(b"garbage").getvalue())
    again, _ = image_folder.load(root, size=8, val_fraction=0.5)
    np.testing.assert_array_equal(again["train_images"], arrays["train_images"])
