"""Train-step speed of the Flax models against their PyTorch references, side by side in one run.

  python -m megathread_jax.bench [--model mobilevit_xxs] [--batch-size 64] [--resolution 64]
                                 [--dtype float32|bfloat16] [--steps 20] [--json FILE] [--quick]

Both sides run the same model, batch, resolution and precision with AdamW and label-smoothed
cross-entropy on data already on the device. The reference is timm's (MobileViT) or torchvision's
(MobileNetV2) model in eager mode, on a GPU with autocast and channels-last for bfloat16. Prints
one table; `--json` also writes it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from megathread_jax import models
from megathread_jax.models.layers import DEPTHWISE_IMPLS, resolve_depthwise_impl
from megathread_jax.train import TrainState, make_train_step



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
    model_name: str, batch_size: int, resolution: int, dtype: str, steps: int, warmup: int, depthwise_impl: str
) -> float:
    """Images per second of the jitted train step (compile excluded)."""
    num_classes = REFERENCES[model_name][2]
    model = models.create(model_name, num_classes=num_classes, dtype=dtype, depthwise_impl=depthwise_impl)
    tx = optax.adamw(1e-3, weight_decay=0.05)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params))
    step = jax.jit(make_train_step(graphdef, tx, lambda images, key: images, label_smoothing=0.1, seed=0),
                   donate_argnums=0)
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.random((batch_size, resolution, resolution, 3), np.float32)),
        "label": jnp.asarray(rng.integers(0, num_classes, batch_size), jnp.int32),
    }
    for _ in range(warmup):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    return steps * batch_size / (time.perf_counter() - start)


def time_reference(model_name: str, batch_size: int, resolution: int, dtype: str, steps: int, warmup: int) -> float:
    """Images per second of the PyTorch reference's eager train step."""
    import torch

    _, build, num_classes = REFERENCES[model_name]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build(num_classes).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    images = torch.rand(batch_size, 3, resolution, resolution, device=device)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)
    low_precision = dtype != "float32" and device == "cuda"
    if low_precision:
        model = model.to(memory_format=torch.channels_last)
        images = images.to(memory_format=torch.channels_last)
    autocast_dtype = getattr(torch, dtype)

    def step():
        with torch.autocast(device, dtype=autocast_dtype, enabled=low_precision):
            loss = torch.nn.functional.cross_entropy(model(images), labels, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return steps * batch_size / (time.perf_counter() - start)


def describe_device() -> str:
    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"CPU, {os.cpu_count()} cores"
    return device.device_kind


def run(args: argparse.Namespace) -> list[dict]:
    impl = resolve_depthwise_impl(args.depthwise_impl)
    setting = f"train b{args.batch_size} {args.resolution}px {args.dtype} dw={impl}"
    ours = time_flax(args.model, args.batch_size, args.resolution, args.dtype, args.steps, args.warmup, impl)
    reference = None
    if not args.no_reference:
        reference = time_reference(args.model, args.batch_size, args.resolution, args.dtype, args.steps, args.warmup)
    return [{
        "model": args.model,
        "setting": setting,
        "ours_img_per_s": round(ours, 1),
        "reference": REFERENCES[args.model][0],
        "reference_img_per_s": None if reference is None else round(reference, 1),
        "ratio": None if reference is None else round(ours / reference, 2),
        "device": describe_device(),
        "date": datetime.date.today().isoformat(),
    }]


def format_table(rows: list[dict]) -> str:
    columns = ["model", "setting", "ours_img_per_s", "reference", "reference_img_per_s", "ratio", "device", "date"]
    cells = [[str(row[c]) if row[c] is not None else "-" for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, cells)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m megathread_jax.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilevit_xxs", choices=sorted(REFERENCES))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--depthwise-impl", default="auto", choices=DEPTHWISE_IMPLS)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-reference", action="store_true", help="time the Flax side only")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the command works")
    parser.add_argument("--json", help="also write the table as JSON to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.resolution, args.steps, args.warmup = 4, 32, 2, 1
    rows = run(args)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
