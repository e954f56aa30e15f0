"""Attention weights of GPT-2 for a prompt, and the labelled heatmaps of one layer's heads.

GPT-2 is causal: each token attends to itself and the tokens before it, so in "The cat sat on the
mat" the word "sat" can look back at "cat" but not ahead at "mat".
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np
from flax import nnx


def attention_maps(model: nnx.Module, input_ids: np.ndarray) -> np.ndarray:
    """Softmax attention weights (n_layer, B, n_head, T, T) of `model` on `input_ids` (B, T)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def weights(state, ids):
        m = nnx.merge(graphdef, state)
        m.eval()
        return m.attention_weights(ids)

    return np.asarray(weights(state, np.asarray(input_ids)))


def plot_attention(weights: np.ndarray, tokens: list[str], path: str | pathlib.Path, *, title: str) -> pathlib.Path:
    """Saves a PNG of heatmaps (n_head, T, T) with the tokens on both axes, plus the mean over heads."""
    # An explicit Figure: no pyplot, so a notebook's own backend and figures are left alone.
    from matplotlib.figure import Figure

    panels = [("mean of heads", weights.mean(axis=0))] + [(f"head {h}", w) for h, w in enumerate(weights)]
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    size = max(3.0, 0.35 * len(tokens) + 1.5)
    # Constrained layout keeps the panel titles, the tick labels and the suptitle from overlapping.
    fig = Figure(figsize=(size * columns + 1.0, size * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (name, w) in zip(axes.flat[: len(panels)], panels, strict=True):
        image = ax.imshow(w, cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_title(name)
        ax.set_xticks(range(len(tokens)), tokens, rotation=90)
        ax.set_yticks(range(len(tokens)), tokens)
        ax.set_xlabel("attends to (key)")
        ax.set_ylabel("token (query)")
    fig.colorbar(image, ax=axes, label="attention weight", shrink=0.8)
    fig.suptitle(title)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
