"""LoRA: low-rank adapters on GPT-2's projections, trained while every base weight stays frozen.

Config fields (`config.lora`):

  rank     the adapters' rank (0 = no adapters: full fine-tuning)
  alpha    each adapter adds alpha / rank * x @ a @ b to its projection's output
  targets  path patterns of the projections to adapt, as the freezing module writes them
           (`transformer.h.[0-5].attn`); "" = every attention and MLP projection

At the end of a run the adapters are saved on their own (`<workdir>/adapter`, loadable onto the same
base weights with `load_adapter` or `generate --adapter`) and then merged into the projections'
weights, so the run's final weights are a plain GPT-2 for `generate`, `convert` and `init_from`.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import ml_collections
from flax import nnx

from megathread_jax import checkpoints, freezing
from megathread_jax.errors import CheckpointMismatchError, ConfigurationError
from megathread_jax.models.gpt2 import Conv1D, LowRankAdapter

ADAPTER_DIR = "adapter"  # <workdir>/adapter
ADAPTER_META = "adapter.json"


def projections(model: nnx.Module) -> dict[str, Conv1D]:
    """Every projection an adapter can be put on, by module path."""
    return {freezing.dotted_path(path): module for path, module in model.iter_modules() if isinstance(module, Conv1D)}


def adapted(model: nnx.Module) -> dict[str, Conv1D]:
    """The projections that carry an adapter, by module path."""
    return {path: module for path, module in projections(model).items() if module.lora is not None}


def add_adapters(model: nnx.Module, *, rank: int, alpha: float, targets: str, seed: int) -> list[str]:
    """Puts a fresh adapter on each projection matched by `targets` ("" = all); returns their paths.
    The model computes exactly what it did before, until the adapters train."""
    candidates = projections(model)
    if not candidates:
        raise ConfigurationError(
            f"config.lora: LoRA adapts GPT-2's projections and {type(model).__name__} has none; "
            "set --config.lora.rank=0 (or freeze layers with --config.freeze)"
        )
    patterns = [freezing.compile_pattern(p) for p in freezing.split_items(targets)]
    for pattern in patterns:
        if not any(pattern.match(path) for path in candidates):
            first = next(iter(candidates))
            raise ConfigurationError(
                f"config.lora.targets: {pattern.text!r} matches no projection; the projections are "
                f"{len(candidates)} paths like {first} (a pattern such as 'transformer.h.[0-5].attn' picks some)"
            )
    chosen = [path for path in candidates if not patterns or any(p.match(path) for p in patterns)]
    rngs = nnx.Rngs(params=jax.random.fold_in(jax.random.key(seed), 1))
    for path in chosen:
        module = candidates[path]
        fan_in, fan_out = module.weight.get_value().shape
        module.lora = LowRankAdapter(fan_in, fan_out, rank=rank, alpha=alpha, rngs=rngs)
    return chosen


def add_configured_adapters(model: nnx.Module, config: ml_collections.ConfigDict) -> list[str]:
    """`add_adapters` with `config.lora`'s fields (none when its rank is 0)."""
    if not config.lora.rank:
        return []
    return add_adapters(
        model, rank=config.lora.rank, alpha=config.lora.alpha, targets=config.lora.targets, seed=config.seed
    )


def trainable_patterns(paths: list[str]) -> tuple[freezing.PathPattern, ...]:
    """The patterns of the adapters' parameters: what a LoRA run trains."""
    return tuple(freezing.compile_pattern(f"{path}.lora") for path in paths)


def adapter_state(model: nnx.Module) -> nnx.State:
    """The adapters' parameters alone."""
    return nnx.state(model, nnx.All(nnx.Param, nnx.PathContains("lora")))


def merge(model: nnx.Module) -> int:
    """Adds each adapter into its projection's weight and removes it: a plain model again, computing
    what the adapted one did (to float rounding). Returns the count merged."""
    merged = adapted(model)
    for module in merged.values():
        module.weight.set_value(module.weight.get_value() + module.lora.weight_delta())
        module.lora = None
    return len(merged)


def save_adapter(directory: str | pathlib.Path, model: nnx.Module, model_name: str, **extra: Any) -> pathlib.Path:
    """Writes the adapters (unmerged) and what they fit onto: the base model's name and shape."""
    modules = adapted(model)
    first = next(iter(modules.values())).lora
    meta = {
        "model": model_name,
        "model_kwargs": model.shape_kwargs(),
        "rank": first.rank,
        "alpha": first.alpha,
        "projections": list(modules),
        **extra,
    }
    return checkpoints.save_arrays(directory, adapter_state(model), meta, meta_file=ADAPTER_META)


def load_adapter(model: nnx.Module, model_name: str, directory: str | pathlib.Path) -> dict[str, Any]:
    """Puts the adapters saved in `directory` onto `model` (its base: same architecture and shape);
    returns their metadata. The adapters stay unmerged: `merge` folds them in."""
    meta, arrays = checkpoints.read_weights(directory, meta_file=ADAPTER_META)
    if meta["model"] != model_name or meta["model_kwargs"] != model.shape_kwargs():
        raise CheckpointMismatchError(
            f"the adapter in {directory} was trained on {meta['model']} {meta['model_kwargs']}, not on this "
            f"{model_name} {model.shape_kwargs()}; load it onto the weights it was trained from"
        )
    if adapted(model):
        raise ConfigurationError("the model already carries adapters; merge them first (lora.merge)")
    # Any seed: the saved values replace the fresh ones.
    add_adapters(model, rank=meta["rank"], alpha=meta["alpha"], targets=",".join(meta["projections"]), seed=0)
    state = adapter_state(model)
    nnx.replace_by_pure_dict(state, arrays)
    nnx.update(model, state)
    return meta
