"""Speed of megathread_jax's models against their PyTorch references, side by side in one run.

Run from a checkout (the package itself never imports this folder):
  python -m benchmarks.bench --suite cpu|gpu [--rounds N] [--only TEXT] [--json FILE] [--quick]
  python -m benchmarks.bench [--model mobilevit_xxs] [--batch-size 64] [--resolution 64]
                             [--dtype float32|bfloat16] [--steps 20] [--torch-compile]
                             [--input-path] [--e2e-epochs N] [--profile DIR]
  python -m benchmarks.bench --model gpt2 [--n-layer 6 --n-embd 384 --n-head 6] [--seq-len 256]
                             [--batch-size 8] [--gen-batch-sizes 1,8] [--new-tokens 64]

Both frameworks run in one process, so they share its environment, allocator settings included
(the table's device column names them). `--suite cpu|gpu` runs every row of the README's
Performance table for that device; `--only TEXT` (repeatable) keeps the suite's rows whose label
contains TEXT. `--rounds N` runs each row N times, each time in a fresh process (ours timed first,
then the reference), and reports the medians: on a machine whose speed drifts between minutes, the
ratio of medians is steadier than any single run. `--profile DIR` traces a few more train steps of
each side with its framework's profiler and prints what ran per step.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator

if __name__ == "__main__":
    # PyTorch shares the GPU with JAX in this process: JAX takes memory as it needs it instead of
    # most of it up front (read when JAX starts its GPU backend).
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

from benchmarks import gpt2, image_models  # noqa: E402
from benchmarks.table import allocator_environment, format_table, median_of_rounds  # noqa: E402
from benchmarks.timing import PROFILED_STEPS, progress  # noqa: E402
from megathread_jax.models import gpt2 as gpt2_model  # noqa: E402
from megathread_jax.models.convolution import CONV_IMPLS  # noqa: E402

CHECKOUT = pathlib.Path(__file__).resolve().parents[1]

# The rows of the README's Performance table. Each entry overrides the command-line defaults.
# On a GPU, 50 timed steps: 20 of MobileViT-XXS's steps are too short a window.
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


def run(args: argparse.Namespace) -> list[dict]:
    return gpt2.rows(args) if args.model == "gpt2" else image_models.rows(args)


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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--suite", choices=sorted(SUITES), help="every row of the Performance table for this device")
    p.add_argument("--model", default="mobilevit_xxs", choices=sorted([*image_models.REFERENCES, "gpt2"]))
    p.add_argument("--batch-size", type=int)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--conv-impl", default="auto", choices=CONV_IMPLS)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--torch-compile", action="store_true", help="also (GPT-2: instead) time the reference under torch.compile"
    )
    images = p.add_argument_group("MobileViT-XXS input path and end to end")
    images.add_argument("--input-path", action="store_true", help="time the training input path against synthetic data")
    images.add_argument("--e2e-epochs", type=int, default=0, help="time a whole run of this many epochs")
    images.add_argument("--num-images", type=int, default=100_000, help="training images in memory")
    lm = p.add_argument_group("GPT-2")
    lm.add_argument("--n-layer", type=int, default=6)
    lm.add_argument("--n-embd", type=int, default=384)
    lm.add_argument("--n-head", type=int, default=6)
    lm.add_argument("--seq-len", type=int, default=256)
    lm.add_argument("--attention-impl", default="xla", choices=gpt2_model.ATTENTION_IMPLS)
    lm.add_argument("--gen-batch-sizes", default="1,8", type=lambda v: [int(b) for b in v.split(",") if b])
    lm.add_argument("--prompt-len", type=int, default=16)
    lm.add_argument("--new-tokens", type=int, default=64)
    lm.add_argument("--gen-repeats", type=int, default=3)
    p.add_argument("--no-reference", action="store_true", help="time the Flax side only")
    p.add_argument(
        "--profile",
        metavar="DIR",
        help=f"after timing, trace {PROFILED_STEPS} train steps of each side with its framework's profiler into DIR "
        "and print what ran per step",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check the command works")
    p.add_argument("--json", help="also write the table as JSON to this file (after each row)")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="time each row this many times, each in a fresh process, and report the medians",
    )
    p.add_argument(
        "--only",
        action="append",
        help="with --suite: only the rows whose label (printed to stderr as each row finishes) contains this text, "
        "e.g. '96px' or 'gpt2'; may be repeated",
    )
    p.add_argument("--row", help=argparse.SUPPRESS)
    return p


def _rows_in_fresh_process(row_args: argparse.Namespace) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "rows.json"
        command = [sys.executable, "-m", "benchmarks.bench", "--row", json.dumps(vars(row_args)), "--json", str(out)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=CHECKOUT)
        return json.loads(out.read_text())


def _rounds(row_args: argparse.Namespace, count: int) -> list[list[dict]]:
    rounds = []
    for index in range(count):
        rounds.append(_rows_in_fresh_process(row_args))
        summary = "; ".join(f"{r['ours']} / {r['reference_value'] or '-'} {r['unit']}" for r in rounds[-1])
        progress(f"{row_label(row_args)} round {index + 1} of {count}: ours / reference {summary}")
    return rounds


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


def row_label(row_args: argparse.Namespace) -> str:
    if row_args.model == "gpt2":
        return f"gpt2 b{row_args.batch_size} T{row_args.seq_len} attn={row_args.attention_impl}"
    if row_args.input_path:
        kind = "input path"
    elif row_args.e2e_epochs:
        kind = f"{row_args.e2e_epochs} epochs end to end"
    else:
        kind = "train step"
    return f"{row_args.model} b{row_args.batch_size} {row_args.resolution}px {kind}"


def main(argv: list[str] | None = None) -> list[dict]:
    p = parser()
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, not {args.rounds}")
    if args.only and not args.suite:
        p.error("--only picks rows of a --suite")
    if args.profile and (args.suite or args.rounds > 1 or args.input_path or args.e2e_epochs):
        p.error("--profile traces one row's train steps: not with --suite, --rounds, --input-path or --e2e-epochs")
    suite_rows = list(_each_row_args(args))
    chosen = [r for r in suite_rows if not args.only or any(text in row_label(r) for text in args.only)]
    if not chosen:
        labels = "; ".join(map(row_label, suite_rows))
        p.error(f"--only {' / '.join(args.only)} matches no row of the {args.suite} suite: {labels}")
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
            failures.append(f"{row_label(row_args)}: {type(error).__name__}: {error}")
        progress(f"{row_label(row_args)}: {time.perf_counter() - started:.0f} s")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    print(format_table(rows))
    print(f"Both sides of each row ran in one process, under: {allocator_environment()}")
    if failures:
        raise SystemExit(f"{len(failures)} row(s) of the suite failed:\n" + "\n".join(failures))
    return rows


if __name__ == "__main__":
    main()
