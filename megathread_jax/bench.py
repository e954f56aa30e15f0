"""Speed of the Flax models against their PyTorch references, side by side in one run.

  python -m megathread_jax.bench --suite cpu|gpu [--json FILE] [--quick]
  python -m megathread_jax.bench [--model mobilevit_xxs] [--batch-size 64] [--resolution 64]
                                 [--dtype float32|bfloat16] [--steps 20] [--torch-compile]
                                 [--input-path] [--e2e-epochs N] [--json FILE] [--quick] [--profile DIR]
  python -m megathread_jax.bench --model gpt2 [--n-layer 6 --n-embd 384 --n-head 6] [--seq-len 256]
                                 [--batch-size 8] [--gen-batch-sizes 1,8] [--new-tokens 64]

Image models: the train step (AdamW, label-smoothed cross-entropy, data already on the device)
against timm's (MobileViT) or torchvision's (MobileNetV2) model in eager mode (with
`--torch-compile` also under `torch.compile`), on a GPU with autocast and channels-last for
bfloat16. `--input-path`: the same step fed as training is (uint8 images in host memory, gathered
by step, augmented on the device) against synthetic images already on the device.
`--e2e-epochs N`: wall time of `train_and_evaluate` on in-memory random images of Tiny ImageNet's
size and shape (100,000 train, 10,000 val, 64 px) at `--resolution`. GPT-2: the train step (AdamW,
next-token loss, dropout off) against Hugging Face's `GPT2LMHeadModel` (eager, or SDPA attention
under `torch.compile`), its MFU on GPUs of known peak, and greedy generation against `generate`.
`--suite cpu|gpu` runs every row of the README's Performance table for that device; the table is
printed, and written to `--json` after each row; `--only TEXT` (repeatable) keeps the suite's rows
whose label contains TEXT. `--rounds N` runs each row N times, each time in a
fresh process (ours timed first, then the reference, as in one run), and reports the medians: on a
machine whose speed drifts between minutes, the ratio of medians is steadier than any single run.
`--profile DIR` traces a few more train steps of each side with its framework's profiler and prints
what ran per step (kernels or operations, their summed time, the longest kinds).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator

from megathread_jax import host_memory

if __name__ == "__main__":
    # Before jax and flax are imported, so the restart costs a Python start-up, not their import.
    host_memory.reexec_with_huge_pages()
    # PyTorch shares the GPU with JAX in this process: JAX takes memory as it needs it instead of
    # 75% up front (read when JAX starts its GPU backend).
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from megathread_jax import generate, models, parallel, profiling, tasks, train  # noqa: E402
from megathread_jax.config_base import load_config  # noqa: E402
from megathread_jax.models.layers import CONV_IMPLS, resolve_conv_impl  # noqa: E402
from megathread_jax.train import TrainState, make_train_step  # noqa: E402


def _timm(name: str):
    def build(num_classes: int):
        import timm

        return timm.create_model(name, num_classes=num_classes)

    return build


def _torchvision_mobilenet_v2(num_classes: int):
    import torchvision

    return torchvision.models.mobilenet_v2(num_classes=num_classes)


# model -> (reference label, reference builder, classes of the series' data set)
REFERENCES = {
    "mobilevit_xxs": ("timm eager", _timm("mobilevit_xxs"), 200),
    "mobilevit_xs": ("timm eager", _timm("mobilevit_xs"), 200),
    "mobilevit_s": ("timm eager", _timm("mobilevit_s"), 200),
    "mobilenet_v2": ("torchvision eager", _torchvision_mobilenet_v2, 10),
}


def time_flax(
    model_name: str,
    batch_size: int,
    resolution: int,
    dtype: str,
    steps: int,
    warmup: int,
    conv_impl: str,
    profile_dir: pathlib.Path | None = None,
) -> float:
    """Images per second of the jitted train step (compile excluded)."""
    num_classes = REFERENCES[model_name][2]
    model = models.create(model_name, num_classes=num_classes, dtype=dtype, conv_impl=conv_impl)
    batch = jax.tree.map(jnp.asarray, _synthetic_batch(batch_size, resolution, num_classes))
    return batch_size / _seconds_per_flax_step(
        model, _synthetic_loss, lambda step: batch, steps, warmup, profile_dir=profile_dir
    )


def _progress(message: str) -> None:
    """A line on stderr while a row runs: on a GPU, compilation can take most of a row's minutes."""
    print(message, file=sys.stderr, flush=True)


def _synthetic_loss(model, batch, key):
    return tasks.classification_loss(model(batch["image"]), batch["label"], 0.1), {}


def _synthetic_batch(batch_size: int, resolution: int, num_classes: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "image": rng.random((batch_size, resolution, resolution, 3), np.float32),
        "label": rng.integers(0, num_classes, batch_size).astype(np.int32),
    }


# Steps traced by `--profile`, after the timed ones.
PROFILED_STEPS = 3


def _seconds_per_flax_step(
    model,
    loss,
    batch_of_step: Callable[[int], dict],
    steps: int,
    warmup: int,
    mesh=None,
    profile_dir: pathlib.Path | None = None,
) -> float:
    """Mean seconds of the jitted, donated AdamW train step of `loss` (compile excluded).

    With a `mesh`, the state is replicated over it first, as the training loop does. With a
    `profile_dir`, `PROFILED_STEPS` more steps are traced there."""
    tx = optax.adamw(1e-3, weight_decay=0.05)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params))
    if mesh is not None:
        state = parallel.replicate(state, mesh)
    step = host_memory.jit_step(make_train_step(graphdef, tx, loss, seed=0), donate_argnums=0)
    started = time.perf_counter()
    for i in range(warmup):
        state, metrics = step(state, batch_of_step(i))
        if i == 0:
            jax.block_until_ready(metrics)
            _progress(f"Flax step: compiled and ran step 1 in {time.perf_counter() - started:.1f} s")
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for i in range(steps):
        state, metrics = step(state, batch_of_step(warmup + i))
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / steps
    if step.jitted._cache_size() != 1:  # a recompilation inside the timed steps would be timed too
        raise RuntimeError(
            f"the train step compiled {step.jitted._cache_size()} times; every step must reuse one program"
        )
    if profile_dir is not None:
        with profiling.jax_profile(profile_dir, PROFILED_STEPS, title=profile_dir.name):
            for i in range(PROFILED_STEPS):
                state, metrics = step(state, batch_of_step(warmup + steps + i))
            jax.block_until_ready(metrics)
    return seconds


def time_input_path(
    model_name: str,
    batch_size: int,
    resolution: int,
    dtype: str,
    steps: int,
    warmup: int,
    conv_impl: str,
    num_images: int,
) -> tuple[float, float]:
    """Images per second of the train step fed as in training (uint8 in host memory, gathered by
    step, augmented on the device), and fed synthetic images already on the device."""
    task = tasks.create(_synthetic_image_config(model_name, batch_size, resolution, dtype, conv_impl, num_images))
    mesh = parallel.make_mesh()
    num_classes = task.model_kwargs["num_classes"]
    synthetic = parallel.shard_batch(mesh, _synthetic_batch(batch_size, resolution, num_classes))

    def timed(loss, batch_of_step) -> float:
        model = models.create(model_name, num_classes=num_classes, dtype=dtype, conv_impl=conv_impl)
        return batch_size / _seconds_per_flax_step(model, loss, batch_of_step, steps, warmup, mesh)

    real = timed(task.loss, lambda step: parallel.shard_batch(mesh, task.train_batch(step)))
    return real, timed(_synthetic_loss, lambda step: synthetic)


# The series' MobileViT recipe; its data replaced by random uint8 images of Tiny ImageNet's size.
SERIES_CONFIG = pathlib.Path(__file__).resolve().parent.parent / "configs" / "mobilevit.py"


def _synthetic_image_config(
    model_name: str, batch_size: int, resolution: int, dtype: str, conv_impl: str, num_images: int
):
    """The series' `pretrained_{64,96}` run (random init: same compute) on in-memory random images."""
    if model_name != "mobilevit_xxs":
        raise ValueError(
            "--input-path and --e2e-epochs time the series' MobileViT-XXS recipe: use --model mobilevit_xxs"
        )
    variant = "pretrained_64" if resolution <= 64 else "pretrained_96"
    return load_config(
        f"{SERIES_CONFIG}:{variant}",
        {
            "init_from": "",
            "data.name": "synthetic",
            "data.image_size": 64,
            "data.num_classes": 200,
            "data.train_size": num_images,
            "data.val_size": max(num_images // 10, batch_size),
            "data.resolution": resolution,
            "batch_size": batch_size,
            "model.dtype": dtype,
            "model.conv_impl": conv_impl,
        },
    )


def time_end_to_end(
    model_name: str, batch_size: int, resolution: int, dtype: str, conv_impl: str, epochs: int, num_images: int
) -> float:
    """Wall seconds of `train_and_evaluate` (compilation, training, evaluation, checkpoints)."""
    config = _synthetic_image_config(model_name, batch_size, resolution, dtype, conv_impl, num_images)
    config.num_epochs = epochs
    config.optim.warmup_epochs = min(config.optim.warmup_epochs, epochs)
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        train.train_and_evaluate(config, workdir)
        return time.perf_counter() - start


def _torch_device_and_sync():
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, (torch.cuda.synchronize if device == "cuda" else (lambda: None))


def _torch_compiled(module):
    """`torch.compile` for the one shape a row times. Without `dynamic=False`, compiling the same model
    class a second time for another shape (the suite's 96 px row after its 64 px row, in one process)
    compiles for dynamic shapes instead: over five minutes on an H200, for a program that a user of
    one resolution would not get."""
    import torch

    return torch.compile(module, dynamic=False)


def _seconds_per_call(fn, sync, steps: int, warmup: int, profile_dir: pathlib.Path | None = None) -> float:
    """Mean seconds of `fn` after `warmup` calls; with a `profile_dir`, `PROFILED_STEPS` more calls
    are traced there by PyTorch's profiler."""
    started = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync()
    _progress(
        f"PyTorch step: {warmup} warm-up calls (compilation included, if any) took "
        f"{time.perf_counter() - started:.1f} s"
    )
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    seconds = (time.perf_counter() - start) / steps
    if profile_dir is not None:
        with profiling.torch_profile(profile_dir, PROFILED_STEPS, title=profile_dir.name):
            for _ in range(PROFILED_STEPS):
                fn()
            sync()
    return seconds


def time_reference(
    model_name: str,
    batch_size: int,
    resolution: int,
    dtype: str,
    steps: int,
    warmup: int,
    compiled: bool = False,
    profile_dir: pathlib.Path | None = None,
) -> float:
    """Images per second of the PyTorch reference's train step, eager or under `torch.compile`."""
    import torch

    _, build, num_classes = REFERENCES[model_name]
    device, sync = _torch_device_and_sync()
    model = build(num_classes).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    images = torch.rand(batch_size, 3, resolution, resolution, device=device)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)
    low_precision = dtype != "float32" and device == "cuda"
    if low_precision:
        model = model.to(memory_format=torch.channels_last)
        images = images.to(memory_format=torch.channels_last)
    forward = _torch_compiled(model) if compiled else model

    def step():
        with torch.autocast(device, dtype=getattr(torch, dtype), enabled=low_precision):
            loss = torch.nn.functional.cross_entropy(forward(images), labels, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return batch_size / _seconds_per_call(step, sync, steps, warmup, profile_dir)


# ----------------------------------------------------------------------------------------------
# GPT-2
# ----------------------------------------------------------------------------------------------
def _gpt2_shape(args) -> dict:
    return {
        "n_layer": args.n_layer,
        "n_embd": args.n_embd,
        "n_head": args.n_head,
        "n_positions": args.seq_len,
        "embd_pdrop": 0.0,
        "resid_pdrop": 0.0,
        "attn_pdrop": 0.0,
    }


def _hf_gpt2(args, attention: str = "eager"):
    from transformers import GPT2Config, GPT2LMHeadModel

    device, sync = _torch_device_and_sync()
    model = GPT2LMHeadModel._from_config(GPT2Config(**_gpt2_shape(args)), attn_implementation=attention).to(device)
    model.generation_config.eos_token_id = None  # never stop early: both sides make every token
    model.generation_config.pad_token_id = 0
    return model, device, sync


def gpt2_flops_per_token(n_params: int, n_layer: int, n_embd: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N + 12 * L * d * T (N without the position embeddings)."""
    return 6 * n_params + 12 * n_layer * n_embd * seq_len


# Dense bfloat16 peak FLOP/s by device kind, for MFU.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def device_peak_flops() -> float | None:
    kind = jax.devices()[0].device_kind
    return next((peak for name, peak in PEAK_BF16_FLOPS.items() if name in kind), None)


def time_gpt2_train(args) -> tuple[float, float | None, int]:
    """Tokens per second of the train step, Flax and (unless --no-reference) Hugging Face; and N."""
    model = models.create("gpt2", dtype=args.dtype, attention_impl=args.attention_impl, **_gpt2_shape(args))
    wte, wpe = model.transformer.wte, model.transformer.wpe
    padding_rows = (wte.weight.shape[0] - wte.num_embeddings) * wte.weight.shape[1]
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) - wpe.weight.size - padding_rows
    tokens = np.random.default_rng(0).integers(0, 50257, (args.batch_size, args.seq_len + 1)).astype(np.int32)

    def loss(model, batch, key):
        return tasks.next_token_loss(model(batch["tokens"][:, :-1]), batch["tokens"][:, :-1]), {}

    tokens_per_step = args.batch_size * args.seq_len
    batch = {"tokens": jnp.asarray(tokens)}
    ours = tokens_per_step / _seconds_per_flax_step(
        model, loss, lambda step: batch, args.steps, args.warmup, profile_dir=_profile_dir(args, "ours")
    )
    if args.no_reference:
        return ours, None, n_params
    import torch

    reference, device, sync = _hf_gpt2(args, "sdpa" if args.torch_compile else "eager")
    reference.train()
    optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-3, weight_decay=0.05)
    forward = _torch_compiled(reference) if args.torch_compile else reference
    ids = torch.from_numpy(tokens[:, :-1]).long().to(device)
    low_precision = args.dtype != "float32" and device == "cuda"

    def step():
        with torch.autocast(device, dtype=getattr(torch, args.dtype), enabled=low_precision):
            out = forward(ids, labels=ids)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    seconds = _seconds_per_call(step, sync, args.steps, args.warmup, _profile_dir(args, _gpt2_reference_label(args)))
    return ours, tokens_per_step / seconds, n_params


def _gpt2_reference_label(args) -> str:
    return "HF sdpa + torch.compile" if args.torch_compile else "HF eager"


def time_gpt2_generate(args, batch_size: int) -> tuple[float, float | None]:
    """New tokens per second of greedy generation from a random prompt, Flax and Hugging Face."""
    model = models.create("gpt2", dtype=args.dtype, **_gpt2_shape(args))
    model.eval()
    prompt = np.random.default_rng(1).integers(0, 50257, (batch_size, args.prompt_len)).astype(np.int32)
    new_tokens = batch_size * args.new_tokens

    def ours_call():
        generate.generate(model, prompt, max_new_tokens=args.new_tokens)

    ours = new_tokens / _seconds_per_call(ours_call, lambda: None, args.gen_repeats, 1)
    if args.no_reference:
        return ours, None
    import torch

    reference, device, sync = _hf_gpt2(args)
    reference.eval()
    if args.dtype != "float32" and device == "cuda":
        reference = reference.to(getattr(torch, args.dtype))
    ids = torch.from_numpy(prompt).long().to(device)

    def reference_call():
        with torch.no_grad():
            reference.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                do_sample=False,
            )

    return ours, new_tokens / _seconds_per_call(reference_call, sync, args.gen_repeats, 1)


def describe_device() -> str:
    device = jax.devices()[0]
    if device.platform == "cpu":
        huge_pages = f"{host_memory.HUGETLB_TUNABLE}=1" in os.environ.get("GLIBC_TUNABLES", "")
        return f"CPU, {os.cpu_count()} cores" + (", malloc on huge pages" if huge_pages else "")
    return device.device_kind


def _significant(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def _row(model: str, setting: str, unit: str, ours: float, reference_name: str, reference: float | None) -> dict:
    return {
        "model": model,
        "setting": setting,
        "unit": unit,
        "ours": _significant(ours),
        "reference": reference_name if reference is not None else "-",
        "reference_value": None if reference is None else _significant(reference),
        "ratio": None if reference is None else round(ours / reference, 2),
        "device": describe_device(),
        "date": datetime.date.today().isoformat(),
    }


def _gpt2_rows(args) -> list[dict]:
    shape = f"L{args.n_layer} d{args.n_embd} h{args.n_head}"
    setting = f"train {shape} b{args.batch_size} T{args.seq_len} {args.dtype} attn={args.attention_impl}"
    ours, theirs, n_params = time_gpt2_train(args)
    rows = [_row("gpt2", setting, "tokens/s", ours, _gpt2_reference_label(args), theirs)]
    peak = device_peak_flops()
    if peak is not None:
        mfu = ours * gpt2_flops_per_token(n_params, args.n_layer, args.n_embd, args.seq_len) / peak
        rows.append(_row("gpt2", f"{setting}, MFU of {peak / 1e12:.0f} TFLOP/s", "% MFU", 100 * mfu, "-", None))
    for batch_size in args.gen_batch_sizes:
        ours, theirs = time_gpt2_generate(args, batch_size)
        rows.append(
            _row(
                "gpt2",
                f"greedy {shape} b{batch_size} prompt {args.prompt_len} +{args.new_tokens} {args.dtype}",
                "new tokens/s",
                ours,
                "HF generate",
                theirs,
            )
        )
    return rows


def _image_rows(args) -> list[dict]:
    impl = resolve_conv_impl(args.conv_impl)
    setting = f"train b{args.batch_size} {args.resolution}px {args.dtype} conv={impl}"
    common = (args.batch_size, args.resolution, args.dtype, args.steps, args.warmup)
    rows = []
    if args.input_path:
        real, synthetic = time_input_path(args.model, *common, impl, args.num_images)
        rows.append(
            _row(
                args.model,
                f"{setting}, input path: {args.num_images} uint8 images in host memory, augmented on the device",
                "images/s",
                real,
                "synthetic on device",
                synthetic,
            )
        )
    if args.e2e_epochs:
        seconds = time_end_to_end(
            args.model, args.batch_size, args.resolution, args.dtype, impl, args.e2e_epochs, args.num_images
        )
        rows.append(
            _row(
                args.model,
                f"end to end, pretrained recipe, {args.e2e_epochs} epochs of {args.num_images} "
                f"64px images at {args.resolution}px, {args.dtype}",
                "s",
                seconds,
                "-",
                None,
            )
        )
    if rows:
        return rows
    ours = time_flax(args.model, *common, impl, _profile_dir(args, "ours"))
    eager = REFERENCES[args.model][0]
    rows.append(
        _row(
            args.model,
            setting,
            "images/s",
            ours,
            eager,
            None if args.no_reference else time_reference(args.model, *common, profile_dir=_profile_dir(args, eager)),
        )
    )
    if args.torch_compile and not args.no_reference:
        label = eager.replace("eager", "torch.compile")
        rows.append(
            _row(
                args.model,
                setting,
                "images/s",
                ours,
                label,
                time_reference(args.model, *common, compiled=True, profile_dir=_profile_dir(args, label)),
            )
        )
    return rows


def _profile_dir(args, side: str) -> pathlib.Path | None:
    """Where `--profile` traces one side of a row: a folder named after it (`ours`, `timm_eager`)."""
    return pathlib.Path(args.profile) / re.sub(r"\W+", "_", side).strip("_") if args.profile else None


def run(args: argparse.Namespace) -> list[dict]:
    return _gpt2_rows(args) if args.model == "gpt2" else _image_rows(args)


# The rows of the README's Performance table. Each entry overrides the command-line defaults.
# On a GPU, 50 timed steps: 20 of MobileViT-XXS's 27 ms steps are too short a window.
GPU_ROW = {"dtype": "bfloat16", "steps": 50}
GPT2_124M = {"model": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "seq_len": 1024, "batch_size": 16}
SUITES = {
    "cpu": [
        {"model": "mobilevit_xxs", "resolution": 64},
        {"model": "mobilenet_v2", "resolution": 32, "steps": 10},
        {"model": "mobilenet_v2", "resolution": 96, "steps": 10},
        {"model": "gpt2"},
        {"model": "mobilevit_xxs", "resolution": 64, "input_path": True, "steps": 10},
    ],
    "gpu": [
        {**GPU_ROW, "model": "mobilevit_xxs", "batch_size": 256, "resolution": 64, "torch_compile": True},
        {**GPU_ROW, "model": "mobilevit_xxs", "batch_size": 256, "resolution": 96, "torch_compile": True},
        {**GPU_ROW, "model": "mobilenet_v2", "batch_size": 256, "resolution": 224},
        {**GPU_ROW, **GPT2_124M, "attention_impl": "cudnn", "torch_compile": True, "gen_batch_sizes": [1, 64]},
        {**GPU_ROW, "model": "mobilevit_xxs", "batch_size": 256, "resolution": 96, "input_path": True},
        {**GPU_ROW, "model": "mobilevit_xxs", "batch_size": 256, "resolution": 96, "e2e_epochs": 30},
        {**GPU_ROW, **GPT2_124M, "attention_impl": "xla", "gen_batch_sizes": [], "no_reference": True},
    ],
}


def _quick(args: argparse.Namespace) -> argparse.Namespace:
    """Tiny sizes and one step: checks that a row can be made, not how fast."""
    args = copy.copy(args)
    args.batch_size, args.resolution, args.steps, args.warmup = 4, 32, 2, 1
    args.n_layer, args.n_embd, args.n_head, args.seq_len = 1, 64, 2, 32
    args.gen_batch_sizes = args.gen_batch_sizes and [1, 2]
    args.prompt_len, args.new_tokens, args.gen_repeats = 4, 4, 1
    args.num_images, args.e2e_epochs = 40, min(args.e2e_epochs, 1)
    args.torch_compile = False  # compiling the reference needs a C++ toolchain and minutes
    if jax.default_backend() == "cpu":
        args.dtype, args.attention_impl = "float32", "xla"  # cuDNN attention and bfloat16 speed need a GPU
    return args


COLUMNS = ["model", "setting", "unit", "ours", "reference", "reference_value", "ratio", "device", "date"]


def format_table(rows: list[dict]) -> str:
    cells = [[str(row[c]) if row[c] is not None else "-" for c in COLUMNS] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(COLUMNS)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(COLUMNS), line(["-" * w for w in widths]), *map(line, cells)])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m megathread_jax.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", choices=sorted(SUITES), help="every row of the Performance table for this device")
    parser.add_argument("--model", default="mobilevit_xxs", choices=sorted([*REFERENCES, "gpt2"]))
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--conv-impl", default="auto", choices=CONV_IMPLS)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--torch-compile", action="store_true", help="also (GPT-2: instead) time the reference under torch.compile"
    )
    images = parser.add_argument_group("MobileViT-XXS input path and end to end")
    images.add_argument("--input-path", action="store_true", help="time the training input path against synthetic data")
    images.add_argument("--e2e-epochs", type=int, default=0, help="time a whole run of this many epochs")
    images.add_argument("--num-images", type=int, default=100_000, help="training images in memory")
    gpt2 = parser.add_argument_group("GPT-2")
    gpt2.add_argument("--n-layer", type=int, default=6)
    gpt2.add_argument("--n-embd", type=int, default=384)
    gpt2.add_argument("--n-head", type=int, default=6)
    gpt2.add_argument("--seq-len", type=int, default=256)
    gpt2.add_argument("--attention-impl", default="xla", choices=models.gpt2.ATTENTION_IMPLS)
    gpt2.add_argument("--gen-batch-sizes", default="1,8", type=lambda v: [int(b) for b in v.split(",") if b])
    gpt2.add_argument("--prompt-len", type=int, default=16)
    gpt2.add_argument("--new-tokens", type=int, default=64)
    gpt2.add_argument("--gen-repeats", type=int, default=3)
    parser.add_argument("--no-reference", action="store_true", help="time the Flax side only")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help=f"after timing, trace {PROFILED_STEPS} train steps of each "
        "side with its framework's profiler into DIR and print what ran per step",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the command works")
    parser.add_argument("--json", help="also write the table as JSON to this file (after each row)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="time each row this many times, each in a fresh process, and report the medians",
    )
    parser.add_argument(
        "--only",
        action="append",
        help="with --suite: only the rows whose label (printed to "
        "stderr as each row finishes) contains this text, e.g. '96px' or 'gpt2'; may be repeated",
    )
    parser.add_argument("--row", help=argparse.SUPPRESS)
    return parser


def _rows_in_fresh_process(row_args: argparse.Namespace) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "rows.json"
        command = [
            sys.executable,
            "-m",
            "megathread_jax.bench",
            "--row",
            json.dumps(vars(row_args)),
            "--json",
            str(out),
        ]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def _rounds(row_args: argparse.Namespace, count: int) -> list[list[dict]]:
    rounds = []
    for index in range(count):
        rounds.append(_rows_in_fresh_process(row_args))
        summary = "; ".join(f"{row['ours']} / {row['reference_value'] or '-'} {row['unit']}" for row in rounds[-1])
        _progress(f"{_row_label(row_args)} round {index + 1} of {count}: ours / reference {summary}")
    return rounds


def median_of_rounds(rounds: list[list[dict]]) -> list[dict]:
    """One row per row of a round: the medians of ours and of the reference over the rounds."""
    combined = []
    for runs in zip(*rounds, strict=True):
        first = runs[0]
        ours = statistics.median(run["ours"] for run in runs)
        setting = f"{first['setting']}, median of {len(runs)} processes"
        reference = None
        if first["reference_value"] is not None:
            reference = statistics.median(run["reference_value"] for run in runs)
            ratios = sorted(run["ratio"] for run in runs)
            setting += f" (ratios {ratios[0]}-{ratios[-1]})"
        combined.append(_row(first["model"], setting, first["unit"], ours, first["reference"], reference))
    return combined


def _each_row_args(args: argparse.Namespace) -> Iterator[argparse.Namespace]:
    if args.row:  # one round of a parent's `--rounds`, already sized
        yield argparse.Namespace(**json.loads(args.row))
        return
    for spec in SUITES[args.suite] if args.suite else [{}]:
        row_args = copy.copy(args)
        vars(row_args).update(spec)
        if row_args.batch_size is None:
            row_args.batch_size = 8 if row_args.model == "gpt2" else 64
        yield row_args


def main(argv: list[str] | None = None) -> list[dict]:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, not {args.rounds}")
    if args.only and not args.suite:
        parser.error("--only picks rows of a --suite")
    if args.profile and (args.suite or args.rounds > 1 or args.input_path or args.e2e_epochs):
        parser.error("--profile traces one row's train steps: not with --suite, --rounds, --input-path or --e2e-epochs")
    suite_rows = list(_each_row_args(args))
    chosen = [
        row_args for row_args in suite_rows if not args.only or any(text in _row_label(row_args) for text in args.only)
    ]
    if not chosen:
        labels = "; ".join(map(_row_label, suite_rows))
        parser.error(f"--only {' / '.join(args.only)} matches no row of the {args.suite} suite: {labels}")
    rows: list[dict] = []
    failures: list[str] = []
    for row_args in chosen:
        row_args = _quick(row_args) if args.quick else row_args
        started = time.perf_counter()
        try:
            rows += run(row_args) if args.rounds == 1 else median_of_rounds(_rounds(row_args, args.rounds))
        except Exception as error:  # in a suite, one broken row must not cost the rows after it
            if not args.suite:
                raise
            traceback.print_exc()
            failures.append(f"{_row_label(row_args)}: {type(error).__name__}: {error}")
        _progress(f"{_row_label(row_args)}: {time.perf_counter() - started:.0f} s")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    print(format_table(rows))
    if failures:
        raise SystemExit(f"{len(failures)} row(s) of the suite failed:\n" + "\n".join(failures))
    return rows


def _row_label(row_args: argparse.Namespace) -> str:
    if row_args.model == "gpt2":
        return f"gpt2 b{row_args.batch_size} T{row_args.seq_len} attn={row_args.attention_impl}"
    kind = (
        "input path"
        if row_args.input_path
        else f"{row_args.e2e_epochs} epochs end to end"
        if row_args.e2e_epochs
        else "train step"
    )
    return f"{row_args.model} b{row_args.batch_size} {row_args.resolution}px {kind}"


if __name__ == "__main__":
    main()
