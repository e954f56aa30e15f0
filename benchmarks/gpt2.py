"""GPT-2 rows: the train step against Hugging Face's `GPT2LMHeadModel` (eager, or SDPA attention
under `torch.compile`), its MFU on GPUs of known peak, and greedy generation against `generate`."""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.table import row
from benchmarks.timing import (
    profile_dir,
    seconds_per_call,
    seconds_per_flax_step,
    torch_compiled,
    torch_device_and_sync,
)
from megathread_jax import generate, models, tasks

# Dense bfloat16 peak FLOP/s by device kind, for MFU.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def _shape(args) -> dict:
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

    device, sync = torch_device_and_sync()
    model = GPT2LMHeadModel._from_config(GPT2Config(**_shape(args)), attn_implementation=attention).to(device)
    model.generation_config.eos_token_id = None  # never stop early: both sides make every token
    model.generation_config.pad_token_id = 0
    return model, device, sync


def flops_per_token(n_params: int, n_layer: int, n_embd: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N + 12 * L * d * T (N without the position embeddings)."""
    return 6 * n_params + 12 * n_layer * n_embd * seq_len


def device_peak_flops() -> float | None:
    kind = jax.devices()[0].device_kind
    return next((peak for name, peak in PEAK_BF16_FLOPS.items() if name in kind), None)


def _reference_label(args) -> str:
    return "HF sdpa + torch.compile" if args.torch_compile else "HF eager"


def time_train(args) -> tuple[float, float | None, int]:
    """Tokens per second of the train step, Flax and (unless --no-reference) Hugging Face; and N."""
    model = models.create("gpt2", dtype=args.dtype, attention_impl=args.attention_impl, **_shape(args))
    wte, wpe = model.transformer.wte, model.transformer.wpe
    padding_rows = (wte.weight.shape[0] - wte.num_embeddings) * wte.weight.shape[1]
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) - wpe.weight.size - padding_rows
    tokens = np.random.default_rng(0).integers(0, 50257, (args.batch_size, args.seq_len + 1)).astype(np.int32)

    def loss(model, batch, key):
        return tasks.next_token_loss(model(batch["tokens"][:, :-1]), batch["tokens"][:, :-1]), {}

    tokens_per_step = args.batch_size * args.seq_len
    batch = {"tokens": jnp.asarray(tokens)}
    seconds = seconds_per_flax_step(
        model, loss, lambda step: batch, args.steps, args.warmup, profile_to=profile_dir(args.profile, "ours")
    )
    ours = tokens_per_step / seconds
    if args.no_reference:
        return ours, None, n_params
    import torch

    reference, device, sync = _hf_gpt2(args, "sdpa" if args.torch_compile else "eager")
    reference.train()
    optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-3, weight_decay=0.05)
    forward = torch_compiled(reference) if args.torch_compile else reference
    ids = torch.from_numpy(tokens[:, :-1]).long().to(device)
    low_precision = args.dtype != "float32" and device == "cuda"

    def step():
        with torch.autocast(device, dtype=getattr(torch, args.dtype), enabled=low_precision):
            out = forward(ids, labels=ids)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    seconds = seconds_per_call(step, sync, args.steps, args.warmup, profile_dir(args.profile, _reference_label(args)))
    return ours, tokens_per_step / seconds, n_params


def time_generate(args, batch_size: int) -> tuple[float, float | None]:
    """New tokens per second of greedy generation from a random prompt, Flax and Hugging Face."""
    model = models.create("gpt2", dtype=args.dtype, **_shape(args))
    model.eval()
    prompt = np.random.default_rng(1).integers(0, 50257, (batch_size, args.prompt_len)).astype(np.int32)
    new_tokens = batch_size * args.new_tokens

    def ours_call():
        generate.generate(model, prompt, max_new_tokens=args.new_tokens)

    ours = new_tokens / seconds_per_call(ours_call, lambda: None, args.gen_repeats, 1)
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

    return ours, new_tokens / seconds_per_call(reference_call, sync, args.gen_repeats, 1)


def rows(args: argparse.Namespace) -> list[dict]:
    shape = f"L{args.n_layer} d{args.n_embd} h{args.n_head}"
    setting = f"train {shape} b{args.batch_size} T{args.seq_len} {args.dtype} attn={args.attention_impl}"
    ours, theirs, n_params = time_train(args)
    made = [row("gpt2", setting, "tokens/s", ours, _reference_label(args), theirs)]
    peak = device_peak_flops()
    if peak is not None:
        mfu = ours * flops_per_token(n_params, args.n_layer, args.n_embd, args.seq_len) / peak
        made.append(row("gpt2", f"{setting}, MFU of {peak / 1e12:.0f} TFLOP/s", "% MFU", 100 * mfu, "-", None))
    for batch_size in args.gen_batch_sizes:
        ours, theirs = time_generate(args, batch_size)
        setting = f"greedy {shape} b{batch_size} prompt {args.prompt_len} +{args.new_tokens} {args.dtype}"
        made.append(row("gpt2", setting, "new tokens/s", ours, "HF generate", theirs))
    return made
