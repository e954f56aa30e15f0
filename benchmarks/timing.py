"""Timing loops for both frameworks: the package's jitted train step, and any PyTorch callable."""

from __future__ import annotations

import pathlib
import re
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks import profiling
from megathread_jax import tasks
from megathread_jax.train import TrainState, initial_state, make_train_step

# Steps traced by `--profile`, after the timed ones.
PROFILED_STEPS = 3


def progress(message: str) -> None:
    """A line on stderr while a row runs: on a GPU, compilation can take most of a row's minutes."""
    print(message, file=sys.stderr, flush=True)


def profile_dir(profile_root: str | None, side: str) -> pathlib.Path | None:
    """Where `--profile` traces one side of a row: a folder named after it (`ours`, `timm_eager`)."""
    return pathlib.Path(profile_root) / re.sub(r"\W+", "_", side).strip("_") if profile_root else None


def synthetic_image_batch(batch_size: int, resolution: int, num_classes: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "image": rng.random((batch_size, resolution, resolution, 3), np.float32),
        "label": rng.integers(0, num_classes, batch_size).astype(np.int32),
    }


def synthetic_image_loss(model, batch, key):
    return tasks.classification_loss(model(batch["image"]), batch["label"], 0.1), {}


def seconds_per_flax_step(
    model,
    loss,
    batch_of_step: Callable[[int], dict],
    steps: int,
    warmup: int,
    mesh=None,
    profile_to: pathlib.Path | None = None,
) -> float:
    """Mean seconds of the training loop's jitted, donated AdamW train step of `loss` (compile excluded).

    With a `mesh`, the state is laid out over it first, as the training loop does. With
    `profile_to`, `PROFILED_STEPS` more steps are traced there."""
    tx = optax.adamw(1e-3, weight_decay=0.05)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if mesh is None:
        state = TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params))
    else:
        state, _ = initial_state(params, rest, tx, mesh)
    step = jax.jit(make_train_step(graphdef, tx, loss, seed=0), donate_argnums=0)
    started = time.perf_counter()
    for i in range(warmup):
        state, metrics = step(state, batch_of_step(i))
        if i == 0:
            jax.block_until_ready(metrics)
            progress(f"Flax step: compiled and ran step 1 in {time.perf_counter() - started:.1f} s")
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for i in range(steps):
        state, metrics = step(state, batch_of_step(warmup + i))
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / steps
    if step._cache_size() != 1:  # a recompilation inside the timed steps would be timed too
        raise RuntimeError(f"the train step compiled {step._cache_size()} times; every step must reuse one program")
    if profile_to is not None:
        with profiling.jax_profile(profile_to, PROFILED_STEPS, title=profile_to.name):
            for i in range(PROFILED_STEPS):
                state, metrics = step(state, batch_of_step(warmup + steps + i))
            jax.block_until_ready(metrics)
    return seconds


def torch_device_and_sync():
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, (torch.cuda.synchronize if device == "cuda" else (lambda: None))


def torch_compiled(module):
    """`torch.compile` for the one shape a row times. Without `dynamic=False`, compiling the same model
    class a second time for another shape (a 96 px row after a 64 px row, in one process) compiles
    for dynamic shapes instead, a program that a user of one resolution would not get."""
    import torch

    return torch.compile(module, dynamic=False)


def seconds_per_call(fn, sync, steps: int, warmup: int, profile_to: pathlib.Path | None = None) -> float:
    """Mean seconds of `fn` after `warmup` calls; with `profile_to`, `PROFILED_STEPS` more calls
    are traced there by PyTorch's profiler."""
    started = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync()
    progress(
        f"PyTorch step: {warmup} warm-up calls (compilation included, if any) took "
        f"{time.perf_counter() - started:.1f} s"
    )
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    seconds = (time.perf_counter() - start) / steps
    if profile_to is not None:
        with profiling.torch_profile(profile_to, PROFILED_STEPS, title=profile_to.name):
            for _ in range(PROFILED_STEPS):
                fn()
            sync()
    return seconds
