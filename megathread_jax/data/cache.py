"""Decoded data sets cached as `.npy` files, written atomically so a kill never leaves half a file."""

from __future__ import annotations

import pathlib

import numpy as np

from megathread_jax import progress

SPLIT_ARRAYS = ("train_images", "train_labels", "val_images", "val_labels")


def load_arrays(directory: pathlib.Path, names=SPLIT_ARRAYS) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when any is missing or unreadable (then the caller rebuilds it)."""
    if not all((directory / f"{n}.npy").is_file() for n in names):
        return None
    try:
        return {n: np.load(directory / f"{n}.npy", allow_pickle=False) for n in names}
    except (ValueError, OSError, EOFError) as e:
        progress.message(f"the cache in {directory} is unreadable ({e}); building it again")
        return None


def save_arrays(directory: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        tmp = directory / f"{name}.tmp.npy"
        np.save(tmp, array)
        tmp.rename(directory / f"{name}.npy")
