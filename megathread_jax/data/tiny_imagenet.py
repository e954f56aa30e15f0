"""Tiny ImageNet (cs231n): 200 classes, 100k train / 10k val 64x64 images.

Read straight from the official zip or its extracted folder (no files are moved): class ids from
`wnids.txt`, training labels from `train/<wnid>/`, validation labels from
`val/val_annotations.txt`. Decoded once to uint8 arrays cached as `.npy` beside the data.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
import pathlib
import urllib.request
import zipfile

import numpy as np
from PIL import Image, UnidentifiedImageError

from megathread_jax import progress
from megathread_jax.data.cache import load_arrays, save_arrays
from megathread_jax.errors import DataNotFoundError

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_REPLACE_ZIP = "delete it to download it again, or replace it with a good copy"
ZIP_NAME = "tiny-imagenet-200.zip"
ZIP_BYTES = 248_100_043
ZIP_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
ROOT = "tiny-imagenet-200"
IMAGE_SIZE = 64
CACHE_VERSION = 1


class _Source:
    """Reads relative paths under `tiny-imagenet-200/` from a zip or a folder."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        if path.is_file():
            self._zip = zipfile.ZipFile(path)
            self._names = set(self._zip.namelist())
        else:
            self._zip = None

    def read(self, rel: str) -> bytes:
        if self._zip is not None:
            try:
                return self._zip.read(f"{ROOT}/{rel}")
            except KeyError:
                raise DataNotFoundError(f"{self.path} has no {ROOT}/{rel}: not a Tiny ImageNet zip") from None
            except (zipfile.BadZipFile, OSError) as e:
                raise DataNotFoundError(f"{self.path} is damaged ({ROOT}/{rel}: {e}); {_REPLACE_ZIP}") from None
        file = self.path / rel
        if not file.is_file():
            raise DataNotFoundError(f"{file} is missing: {self.path} is not an extracted Tiny ImageNet folder")
        return file.read_bytes()

    def list_dir(self, rel: str) -> list[str]:
        if self._zip is not None:
            prefix = f"{ROOT}/{rel.rstrip('/')}/"
            return sorted(
                n[len(prefix) :]
                for n in self._names
                if n.startswith(prefix) and not n.endswith("/") and "/" not in n[len(prefix) :]
            )
        folder = self.path / rel
        return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def _decode(data: bytes, rel: str) -> np.ndarray:
    try:
        return _decode_image(data)
    except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
        reason = "unrecognised image data" if isinstance(e, UnidentifiedImageError) else str(e)
        raise DataNotFoundError(f"{ROOT}/{rel} is not a readable image ({reason}); {_REPLACE_ZIP}") from None


def _decode_image(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")  # some images are greyscale
        if img.size != (IMAGE_SIZE, IMAGE_SIZE):
            img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
        return np.asarray(img, np.uint8)


def _decode_all(source: _Source, paths: list[str], desc: str) -> np.ndarray:
    images = np.empty((len(paths), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        pending = {}
        for i, rel in enumerate(progress.bar(paths, desc=desc, unit="img", leave=False)):
            pending[pool.submit(_decode, source.read(rel), rel)] = i
        for future in concurrent.futures.as_completed(pending):
            images[pending[future]] = future.result()
    return images


def _read_split(source: _Source, split: str, class_index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    paths, labels = [], []
    if split == "train":
        for wnid, label in class_index.items():
            files = [f for f in source.list_dir(f"train/{wnid}/images") if f.lower().endswith(".jpeg")]
            paths += [f"train/{wnid}/images/{f}" for f in files]
            labels += [label] * len(files)
    else:
        for line in source.read("val/val_annotations.txt").decode().splitlines():
            if not line.strip():
                continue
            filename, wnid = line.split("\t")[:2]
            if wnid not in class_index:
                raise DataNotFoundError(f"val_annotations.txt names class {wnid} that wnids.txt lacks")
            paths.append(f"val/images/{filename}")
            labels.append(class_index[wnid])
    if not paths:
        raise DataNotFoundError(f"no {split} images found in {source.path}")
    return _decode_all(source, paths, f"decoding {split}"), np.asarray(labels, np.int32)


def find_source(data_dir: pathlib.Path) -> pathlib.Path | None:
    """The zip or extracted folder under `data_dir` (or `data_dir` itself), if present."""
    zip_path = data_dir / ZIP_NAME
    if zip_path.is_file() and not zipfile.is_zipfile(zip_path):
        raise DataNotFoundError(
            f"{zip_path} is not a complete zip ({zip_path.stat().st_size:,} of "
            f"{ZIP_BYTES:,} bytes: truncated or damaged); {_REPLACE_ZIP}"
        )
    for candidate in (data_dir / ZIP_NAME, data_dir / ROOT, data_dir):
        if candidate.is_file() and zipfile.is_zipfile(candidate):
            return candidate
        if candidate.is_dir() and (candidate / "wnids.txt").is_file():
            return candidate
    return None


def download(data_dir: pathlib.Path, url: str = URL) -> pathlib.Path:
    """Downloads the official zip with a progress bar and checks its size and MD5."""
    data_dir.mkdir(parents=True, exist_ok=True)
    target = data_dir / ZIP_NAME
    partial = target.with_suffix(".zip.part")
    md5 = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or ZIP_BYTES)
            with progress.bar(total=total, unit="B", unit_scale=True, desc=f"downloading {ZIP_NAME}") as shown:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    md5.update(chunk)
                    shown.update(len(chunk))
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise DataNotFoundError(_missing_message(data_dir, f"download failed ({e})")) from None
    size = partial.stat().st_size
    if size != ZIP_BYTES or md5.hexdigest() != ZIP_MD5:
        partial.unlink()
        raise DataNotFoundError(
            f"downloaded {ZIP_NAME} is corrupt ({size} bytes, md5 {md5.hexdigest()}; "
            f"expected {ZIP_BYTES} bytes, md5 {ZIP_MD5}); run again to retry"
        )
    partial.rename(target)
    return target


def _missing_message(data_dir: pathlib.Path, reason: str) -> str:
    return (
        f"Tiny ImageNet not found in {data_dir} and {reason}. "
        f"Put {ZIP_NAME} (from {URL}) or its extracted folder {ROOT}/ in {data_dir}, "
        "or point --config.data.data_dir at it, or try the built-in data: --config=configs/mobilevit.py:demo"
    )


def _cache_problem(arrays: dict[str, np.ndarray]) -> str | None:
    for split in ("train", "val"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.dtype != np.uint8 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            return f"{split} images are {images.dtype} {images.shape}"
        if len(labels) != len(images) or labels.size and not 0 <= labels.min() <= labels.max() < 200:
            return f"{len(labels)} {split} labels for {len(images)} images"
    return None


def load(data_dir: str | os.PathLike, *, download_if_missing: bool = True) -> dict[str, np.ndarray]:
    """Train/val uint8 images `(N, 64, 64, 3)` and int32 labels; decodes once, then reads the cache."""
    data_dir = pathlib.Path(data_dir).expanduser()
    cache = data_dir / f"cache_v{CACHE_VERSION}"
    cached = load_arrays(cache)
    if cached is not None:
        problem = _cache_problem(cached)
        if problem is None:
            return cached
        progress.message(f"the decoded cache in {cache} is stale or damaged ({problem}); decoding the images again")
    path = find_source(data_dir)
    if path is None:
        if not download_if_missing:
            raise DataNotFoundError(_missing_message(data_dir, "downloading is switched off"))
        path = download(data_dir)
    source = _Source(path)
    wnids = [w.strip() for w in source.read("wnids.txt").decode().splitlines() if w.strip()]
    class_index = {wnid: i for i, wnid in enumerate(wnids)}
    out = {}
    for split in ("train", "val"):
        out[f"{split}_images"], out[f"{split}_labels"] = _read_split(source, split, class_index)
    save_arrays(cache, out)
    return out
