"""Tiny ImageNet loading on a small fake in the official layout (zip and extracted folder)."""

import hashlib
import io
import pathlib
import zipfile

import numpy as np
import pytest
from PIL import Image

from megathread_jax.data import tiny_imagenet
from megathread_jax.errors import DataNotFoundError

WNIDS = ["n01443537", "n01629819", "n01641577"]
TRAIN_PER_CLASS = 4


def _jpeg(colour, mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (64, 64), colour if mode == "RGB" else colour[0]).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _fake_files() -> dict[str, bytes]:
    """Class c's images are filled with grey level 40 + 80*c, so labels can be checked from pixels."""
    files = {
        "wnids.txt": "\n".join(WNIDS).encode() + b"\n",
        "words.txt": "".join(f"{w}\tthing {i}\n" for i, w in enumerate(WNIDS)).encode(),
    }
    for c, wnid in enumerate(WNIDS):
        level = 40 + 80 * c
        for i in range(TRAIN_PER_CLASS):
            mode = "L" if i == 0 else "RGB"  # some Tiny ImageNet images are greyscale
            files[f"train/{wnid}/images/{wnid}_{i}.JPEG"] = _jpeg((level,) * 3, mode)
        files[f"train/{wnid}/{wnid}_boxes.txt"] = b""
    annotations = []
    for i, c in enumerate([2, 0, 1, 2, 1]):
        files[f"val/images/val_{i}.JPEG"] = _jpeg((40 + 80 * c,) * 3)
        annotations.append(f"val_{i}.JPEG\t{WNIDS[c]}\t0\t0\t63\t63")
    files["val/val_annotations.txt"] = ("\n".join(annotations) + "\n").encode()
    return files


def _write_zip(path: pathlib.Path) -> pathlib.Path:
    with zipfile.ZipFile(path, "w") as z:
        for rel, data in _fake_files().items():
            z.writestr(f"tiny-imagenet-200/{rel}", data)
    return path


def _check(arrays):
    assert arrays["train_images"].shape == (len(WNIDS) * TRAIN_PER_CLASS, 64, 64, 3)
    assert arrays["train_images"].dtype == np.uint8
    assert arrays["val_images"].shape == (5, 64, 64, 3)
    for split in ("train", "val"):
        levels = arrays[f"{split}_images"].mean(axis=(1, 2, 3))
        expected = 40 + 80 * arrays[f"{split}_labels"]
        np.testing.assert_allclose(levels, expected, atol=3)
    np.testing.assert_array_equal(arrays["val_labels"], [2, 0, 1, 2, 1])
    np.testing.assert_array_equal(np.bincount(arrays["train_labels"]), [TRAIN_PER_CLASS] * 3)


def test_loads_from_zip_and_caches(tmp_path):
    _write_zip(tmp_path / tiny_imagenet.ZIP_NAME)
    arrays = tiny_imagenet.load(tmp_path, download_if_missing=False)
    _check(arrays)
    assert (tmp_path / "cache_v1" / "train_images.npy").is_file()
    (tmp_path / tiny_imagenet.ZIP_NAME).unlink()  # the second load reads only the cache
    cached = tiny_imagenet.load(tmp_path, download_if_missing=False)
    for name, array in arrays.items():
        np.testing.assert_array_equal(cached[name], array)


def test_loads_from_extracted_folder(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    for rel, data in _fake_files().items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    _check(tiny_imagenet.load(tmp_path, download_if_missing=False))
    assert (tmp_path / "cache_v1" / "val_labels.npy").is_file()


def test_missing_data_says_where_to_put_it(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"(?s)Put tiny-imagenet-200\.zip.*configs/mobilevit.py:demo"):
        tiny_imagenet.load(tmp_path, download_if_missing=False)


def test_download_checks_size_and_checksum(tmp_path, monkeypatch):
    served = _write_zip(tmp_path / "served.zip")
    data_dir = tmp_path / "data"
    with pytest.raises(DataNotFoundError, match="corrupt"):
        tiny_imagenet.download(data_dir, url=served.as_uri())
    assert not list(data_dir.iterdir())  # nothing half-written is left behind
    monkeypatch.setattr(tiny_imagenet, "ZIP_BYTES", served.stat().st_size)
    monkeypatch.setattr(tiny_imagenet, "ZIP_MD5", hashlib.md5(served.read_bytes()).hexdigest())
    path = tiny_imagenet.download(data_dir, url=served.as_uri())
    _check(tiny_imagenet.load(data_dir, download_if_missing=False))
    assert path.read_bytes() == served.read_bytes()


def test_unreachable_download_explains_offline_use(tmp_path):
    with pytest.raises(DataNotFoundError, match="download failed"):
        tiny_imagenet.download(tmp_path, url=(tmp_path / "absent.zip").as_uri())
