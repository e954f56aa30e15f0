"""Weight conversion CLI.

PyTorch -> Flax (a directory the trainer loads with --config.init_from=DIR):
  python -m megathread_jax.convert --model mobilevit_xxs --source timm [--weights FILE] --out DIR
  python -m megathread_jax.convert --model mobilenet_v2 --source torchvision [--tag IMAGENET1K_V1] --out DIR
  python -m megathread_jax.convert --model gpt2 --source hf --out DIR   (also gpt2-medium, gpt2-large, gpt2-xl)
  (without --weights, the published weights are downloaded through timm / torchvision / Hugging Face)
Flax -> PyTorch:
  python -m megathread_jax.convert --model mobilevit_xxs --target timm --from-flax DIR --out FILE.safetensors|.pth
  python -m megathread_jax.convert --model gpt2 --target hf --from-flax WORKDIR/weights --out model.safetensors
Hugging Face model directories (what from_pretrained and pipeline open), both ways:
  python -m megathread_jax.convert --model gpt2 --target hf --from-flax WORKDIR/weights --out HF_DIR
  python -m megathread_jax.convert --model mobilevit_xxs --target hf --from-flax WORKDIR/weights --out HF_DIR
  python -m megathread_jax.convert --model gpt2 --source hf --weights HF_DIR --out DIR   (also MobileViT)
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from megathread_jax import checkpoints, convert, models
from megathread_jax.convert import hf_directory
from megathread_jax.errors import ConfigurationError, exit_code_of

TORCH_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def _to_flax(args) -> str:
    kwargs, extra_meta = {}, {}
    if args.weights and hf_directory.is_model_directory(args.weights):
        state_dict, kwargs, extra_meta = hf_directory.read(args.weights, args.model)
    elif args.weights:
        state_dict = convert.read_weight_file(args.weights)
    else:
        state_dict = convert.fetch(args.model, args.source, args.tag)
    if args.num_classes:
        kwargs["num_classes"] = args.num_classes
    if args.n_head:
        kwargs["n_head"] = args.n_head
    model = convert.from_torch(args.model, state_dict, source=args.source, **kwargs)
    meta = checkpoints.weights_meta(
        args.model,
        model,
        source=args.source,
        weights=str(args.weights or "published"),
        **convert.classifier_meta(args.model, model),
        **extra_meta,
    )
    out = checkpoints.save_weights(args.out, model, meta)
    shape = ", ".join(f"{k}={v}" for k, v in meta["model_kwargs"].items() if k in ("num_classes", "n_layer", "n_embd"))
    return f"wrote {args.model} ({shape}) from {args.source} weights to {out}"


def _to_torch(args) -> str:
    model, meta = checkpoints.model_from_weights(args.from_flax)
    if meta["model"] != args.model:
        raise ConfigurationError(f"{args.from_flax} holds {meta['model']!r} weights, not {args.model!r}")
    out = pathlib.Path(args.out)
    if args.target == "hf" and out.suffix not in TORCH_FILE_SUFFIXES:
        return hf_directory.write(model, args.model, meta, out)
    state_dict = convert.to_torch(args.model, model, target=args.target)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state_dict, str(out))
    else:
        import torch

        torch.save(state_dict, out)
    return f"wrote {len(state_dict)} {args.target} tensors to {out}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m megathread_jax.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, choices=models.names())
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument(
        "--source", help="PyTorch weights to read: timm | hf (MobileViT), torchvision | timm (MobileNetV2), hf (GPT-2)"
    )
    direction.add_argument(
        "--target",
        help="PyTorch naming to write: timm | hf (MobileViT), torchvision | timm (MobileNetV2), hf (GPT-2)",
    )
    parser.add_argument(
        "--weights", help="local .pt/.pth/.bin/.safetensors state_dict, or a Hugging Face model directory"
    )
    parser.add_argument(
        "--tag", help="which published weights to fetch (e.g. IMAGENET1K_V1 for torchvision, gpt2-medium for GPT-2)"
    )
    parser.add_argument("--num-classes", type=int, help="classifier size (default: the checkpoint's)")
    parser.add_argument("--n-head", type=int, help="GPT-2 head count, for widths that are not a published size")
    parser.add_argument("--from-flax", help="directory written by this tool (with --target)")
    parser.add_argument(
        "--out",
        required=True,
        help="output directory (--source); a file, or with --target hf a Hugging Face directory (--target)",
    )
    args = parser.parse_args(argv)
    if args.target and not args.from_flax:
        parser.error("--target needs --from-flax DIR")
    return exit_code_of(lambda: print(_to_flax(args) if args.source else _to_torch(args)))


if __name__ == "__main__":
    sys.exit(main())
