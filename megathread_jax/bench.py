"""Speed of the Flax models against their PyTorch references, side by side in one run.

  python -m megathread_jax.bench [--model mobilevit_xxs] [--batch-size 64] [--resolution 64]
                                 [--dtype float32|bfloat16] [--steps 20] [--json FILE] [--quick]
  python -m megathread_jax.bench --model gpt2 [--n-layer 6 --n-embd 384 --n-head 6] [--seq-len 256]
                                 [--batch-size 8] [--gen-batch-sizes 1,8] [--new-tokens 64]

Image models: the train step (AdamW, label-smoothed cross-entropy, data already on the device)
against timm's (MobileViT) or torchvision's (MobileNetV2) model in eager mode, on a GPU with
autocast and channels-last for bfloat16. GPT-2: the train step (AdamW, next-token loss, dropout
off) against Hugging Face's `GPT2LMHeadModel` in eager mode, and greedy generation against its
`generate`, same config and random weights. Prints one table; `--json` also writes it.
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

from megathread_jax import generate, models, tasks
from megathread_jax.models.layers import CONV_IMPLS, resolve_conv_impl
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
    model_name: str, batch_size: int, resolution: int, dtype: str, steps: int, warmup: int, conv_impl: str
) -> float:
    """Images per second of the jitted train step (compile excluded)."""
    num_classes = REFERENCES[model_name][2]
    model = models.create(model_name, num_classes=num_classes, dtype=dtype, conv_impl=conv_impl)

    def loss(model, batch, key):
        return tasks.classification_loss(model(batch["image"]), batch["label"], 0.1), {}

    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.random((batch_size, resolution, resolution, 3), np.float32)),
        "label": jnp.asarray(rng.integers(0, num_classes, batch_size), jnp.int32),
    }
    return batch_size / _seconds_per_flax_step(model, loss, batch, steps, warmup)


def _seconds_per_flax_step(model, loss, batch, steps: int, warmup: int) -> float:
    """Mean seconds of the jitted, donated AdamW train step of `loss` (compile excluded)."""
    tx = optax.adamw(1e-3, weight_decay=0.05)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params))
    step = jax.jit(make_train_step(graphdef, tx, loss, seed=0), donate_argnums=0)
    for _ in range(warmup):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / steps


def _torch_device_and_sync():
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, (torch.cuda.synchronize if device == "cuda" else (lambda: None))


def _seconds_per_call(fn, sync, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - start) / steps


def time_reference(model_name: str, batch_size: int, resolution: int, dtype: str, steps: int, warmup: int) -> float:
    """Images per second of the PyTorch reference's eager train step."""
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

    def step():
        with torch.autocast(device, dtype=getattr(torch, dtype), enabled=low_precision):
            loss = torch.nn.functional.cross_entropy(model(images), labels, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return batch_size / _seconds_per_call(step, sync, steps, warmup)


# ----------------------------------------------------------------------------------------------
# GPT-2
# ----------------------------------------------------------------------------------------------
def _gpt2_shape(args) -> dict:
    return {"n_layer": args.n_layer, "n_embd": args.n_embd, "n_head": args.n_head, "n_positions": args.seq_len,
            "embd_pdrop": 0.0, "resid_pdrop": 0.0, "attn_pdrop": 0.0}


def _hf_gpt2(args):
    from transformers import GPT2Config, GPT2LMHeadModel

    device, sync = _torch_device_and_sync()
    model = GPT2LMHeadModel(GPT2Config(**_gpt2_shape(args))).to(device)
    model.generation_config.eos_token_id = None  # never stop early: both sides make every token
    model.generation_config.pad_token_id = 0
    return model, device, sync


def time_gpt2_train(args) -> tuple[float, float | None]:
    """Tokens per second of the train step, Flax and (unless --no-reference) Hugging Face."""
    model = models.create("gpt2", dtype=args.dtype, attention_impl=args.attention_impl, **_gpt2_shape(args))
    tokens = np.random.default_rng(0).integers(0, 50257, (args.batch_size, args.seq_len + 1)).astype(np.int32)

    def loss(model, batch, key):
        return tasks.next_token_loss(model(batch["tokens"][:, :-1]), batch["tokens"][:, :-1]), {}

    tokens_per_step = args.batch_size * args.seq_len
    ours = tokens_per_step / _seconds_per_flax_step(model, loss, {"tokens": jnp.asarray(tokens)}, args.steps, args.warmup)
    if args.no_reference:
        return ours, None
    import torch

    reference, device, sync = _hf_gpt2(args)
    reference.train()
    optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-3, weight_decay=0.05)
    ids = torch.from_numpy(tokens[:, :-1]).long().to(device)
    low_precision = args.dtype != "float32" and device == "cuda"

    def step():
        with torch.autocast(device, dtype=getattr(torch, args.dtype), enabled=low_precision):
            out = reference(ids, labels=ids)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    return ours, tokens_per_step / _seconds_per_call(step, sync, args.steps, args.warmup)


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
            reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                               min_new_tokens=args.new_tokens, do_sample=False)

    return ours, new_tokens / _seconds_per_call(reference_call, sync, args.gen_repeats, 1)


def describe_device() -> str:
    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"CPU, {os.cpu_count()} cores"
    return device.device_kind


def _significant(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def _row(model: str, setting: str, unit: str, ours: float, reference_name: str, reference: float | None) -> dict:
    return {
        "model": model,
        "setting": setting,
        "unit": unit,
        "ours": _significant(ours),
        "reference": reference_name,
        "reference_value": None if reference is None else _significant(reference),
        "ratio": None if reference is None else round(ours / reference, 2),
        "device": describe_device(),
        "date": datetime.date.today().isoformat(),
    }


def run(args: argparse.Namespace) -> list[dict]:
    if args.model == "gpt2":
        shape = f"L{args.n_layer} d{args.n_embd} h{args.n_head}"
        rows = []
        ours, theirs = time_gpt2_train(args)
        rows.append(_row("gpt2", f"train {shape} b{args.batch_size} T{args.seq_len} {args.dtype} attn={args.attention_impl}",
                         "tokens/s", ours, "HF eager", theirs))
        for batch_size in args.gen_batch_sizes:
            ours, theirs = time_gpt2_generate(args, batch_size)
            rows.append(_row("gpt2", f"greedy {shape} b{batch_size} prompt {args.prompt_len} +{args.new_tokens} {args.dtype}",
                             "new tokens/s", ours, "HF generate", theirs))
        return rows
    impl = resolve_conv_impl(args.conv_impl)
    setting = f"train b{args.batch_size} {args.resolution}px {args.dtype} conv={impl}"
    ours = time_flax(args.model, args.batch_size, args.resolution, args.dtype, args.steps, args.warmup, impl)
    reference = None
    if not args.no_reference:
        reference = time_reference(args.model, args.batch_size, args.resolution, args.dtype, args.steps, args.warmup)
    return [_row(args.model, setting, "images/s", ours, REFERENCES[args.model][0], reference)]


COLUMNS = ["model", "setting", "unit", "ours", "reference", "reference_value", "ratio", "device", "date"]


def format_table(rows: list[dict]) -> str:
    cells = [[str(row[c]) if row[c] is not None else "-" for c in COLUMNS] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(COLUMNS)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    return "\n".join([line(COLUMNS), line(["-" * w for w in widths]), *map(line, cells)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m megathread_jax.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilevit_xxs", choices=sorted([*REFERENCES, "gpt2"]))
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--conv-impl", default="auto", choices=CONV_IMPLS)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    gpt2 = parser.add_argument_group("GPT-2")
    gpt2.add_argument("--n-layer", type=int, default=6)
    gpt2.add_argument("--n-embd", type=int, default=384)
    gpt2.add_argument("--n-head", type=int, default=6)
    gpt2.add_argument("--seq-len", type=int, default=256)
    gpt2.add_argument("--attention-impl", default="xla", choices=models.gpt2.ATTENTION_IMPLS)
    gpt2.add_argument("--gen-batch-sizes", default="1,8", type=lambda v: [int(b) for b in v.split(",")])
    gpt2.add_argument("--prompt-len", type=int, default=16)
    gpt2.add_argument("--new-tokens", type=int, default=64)
    gpt2.add_argument("--gen-repeats", type=int, default=3)
    parser.add_argument("--no-reference", action="store_true", help="time the Flax side only")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the command works")
    parser.add_argument("--json", help="also write the table as JSON to this file")
    args = parser.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = 8 if args.model == "gpt2" else 64
    if args.quick:
        args.batch_size, args.resolution, args.steps, args.warmup = 4, 32, 2, 1
        args.n_layer, args.n_embd, args.n_head, args.seq_len = 1, 64, 2, 32
        args.gen_batch_sizes, args.prompt_len, args.new_tokens, args.gen_repeats = [1, 2], 4, 4, 1
    rows = run(args)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
