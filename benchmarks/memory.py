"""Memory per device of GPT-2 fine-tuning, planned without allocating it: the train step of each
published size is compiled for abstract inputs (shapes and layouts only) and XLA's buffer
assignment is read from `compile().memory_analysis()`.

Run from a checkout (the package itself never imports this folder):
  python -m benchmarks.memory [--sizes gpt2,gpt2-medium,gpt2-large,gpt2-xl] [--devices 8]
                              [--seq-len 1024] [--batch-per-device 1] [--dtype bfloat16]
                              [--lora-rank 16] [--json FILE]

Rows: full fine-tuning with AdamW under data parallelism (the state replicated) and under
fsdp=DEVICES, each with and without remat, and LoRA on one device. The steps are compiled for this
host's CPU devices (`--devices` of them are simulated when there are fewer), so the numbers are the
CPU compiler's buffer assignment; a GPU compile of the same step fuses differently, and its
runtime adds a workspace of its own.
"""

from __future__ import annotations

import os

if __name__ == "__main__" and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    # The planned mesh is made of simulated CPU devices (read when JAX starts its CPU backend).
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.table import format_table  # noqa: E402
from megathread_jax import config_base, freezing, lora, models, optim, parallel, tasks, train  # noqa: E402

GIB = 2**30
CARDS_GB = (16, 24, 80)  # the cards the README's table answers for


@dataclasses.dataclass(frozen=True)
class Plan:
    size: str
    setup: str  # "data parallel", "fsdp=8", "LoRA r=16"
    remat: str
    devices: int
    params: int  # bytes on one device
    optimizer: int
    temporaries: int
    batch: int
    compile_seconds: float

    @property
    def total(self) -> int:
        return self.params + self.optimizer + self.temporaries + self.batch


def _loss(model, batch, key):
    return tasks.next_token_loss(model(batch["tokens"]), batch["tokens"]), {}


def _bytes_on_one_device(abstract_tree, shardings) -> int:
    """Bytes of the first device's shards of arrays of these shapes laid out by `shardings`."""
    total = 0
    for leaf, sharding in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings), strict=True):
        shard = sharding.shard_shape(leaf.shape)
        total += jnp.dtype(leaf.dtype).itemsize * math.prod(shard)
    return total


def plan(
    size: str,
    *,
    devices: list[jax.Device],
    fsdp: int,
    remat: str,
    lora_rank: int,
    seq_len: int,
    batch_per_device: int,
    dtype: str,
) -> Plan:
    config = config_base.base_config("memory", size)
    config.lora.rank = lora_rank

    def build():
        model = models.create(size, dtype=dtype, remat=remat, n_positions=seq_len, embd_pdrop=0.0, resid_pdrop=0.0)
        lora.add_configured_adapters(model, config)
        return model

    abstract_model = nnx.eval_shape(build)
    adapted = list(lora.adapted(abstract_model))
    graphdef, params, rest = nnx.split(abstract_model, nnx.Param, ...)
    schedule = optax.constant_schedule(config.optim.learning_rate)
    freeze_plan = freezing.FreezePlan(train_only=lora.trainable_patterns(adapted))
    if adapted:
        tx = freezing.partitioned_optimizer(
            freeze_plan, params, schedule, 1, lambda s: optim.make_optimizer(config.optim, s)
        )
    else:
        tx = optim.make_optimizer(config.optim, schedule)
    mesh = parallel.make_mesh(devices, fsdp=fsdp)
    abstract_state = jax.eval_shape(functools.partial(train.state_at_step_zero, tx=tx), params, rest)
    layout = parallel.state_shardings(abstract_state, mesh)
    state_in = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract_state, layout)
    batch_in = {
        "tokens": jax.ShapeDtypeStruct(
            (batch_per_device * len(devices), seq_len), jnp.int32, sharding=parallel.batch_sharding(mesh)
        )
    }
    step = parallel.keep_layout(
        train.make_train_step(graphdef, tx, _loss, seed=0, differentiate=freeze_plan.differentiated), layout
    )
    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state_in, batch_in).compile()
    seconds = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    setup = f"LoRA r={lora_rank}" if lora_rank else (f"fsdp={fsdp}" if fsdp > 1 else "data parallel")
    return Plan(
        size=size,
        setup=setup,
        remat=remat,
        devices=len(devices),
        params=_bytes_on_one_device(abstract_state.params, layout.params),
        optimizer=_bytes_on_one_device(abstract_state.opt_state, layout.opt_state),
        temporaries=int(analysis.temp_size_in_bytes),
        batch=batch_per_device * seq_len * 4,
        compile_seconds=seconds,
    )


def fits(total_bytes: int) -> str:
    return " ".join(f"{gb}GB" for gb in CARDS_GB if total_bytes <= gb * 1e9) or "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(models.gpt2.SIZES))
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch-per-device", type=int, default=1)
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--remat", default="none,full", help="remat policies to plan, comma-separated")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    cpus = jax.devices("cpu")
    if len(cpus) < args.devices:
        parser.error(
            f"{args.devices} devices asked for, {len(cpus)} CPU devices here: run it with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={args.devices}"
        )
    mesh_devices = cpus[: args.devices]
    setups = [(mesh_devices, 1, 0), (mesh_devices, args.devices, 0), (cpus[:1], 1, args.lora_rank)]
    plans = []
    for size in args.sizes.split(","):
        for devices, fsdp, rank in setups:
            for remat in args.remat.split(","):
                print(f"compiling {size} fsdp={fsdp} lora={rank} remat={remat}", file=sys.stderr, flush=True)
                plans.append(
                    plan(
                        size,
                        devices=devices,
                        fsdp=fsdp,
                        remat=remat,
                        lora_rank=rank,
                        seq_len=args.seq_len,
                        batch_per_device=args.batch_per_device,
                        dtype=args.dtype,
                    )
                )
    rows = [
        {
            "model": p.size,
            "setup": f"{p.setup} on {p.devices}",
            "remat": p.remat,
            "params GiB": f"{p.params / GIB:.2f}",
            "AdamW GiB": f"{p.optimizer / GIB:.2f}",
            "temporaries GiB": f"{p.temporaries / GIB:.2f}",
            "per device GiB": f"{p.total / GIB:.2f}",
            "fits": fits(p.total),
            "compile s": f"{p.compile_seconds:.0f}",
        }
        for p in plans
    ]
    print(
        f"GPT-2 fine-tuning, T={args.seq_len}, {args.batch_per_device} sequence(s) per device, {args.dtype} "
        f"compute, float32 parameters; bytes per device from XLA's CPU compiler (jax {jax.__version__})"
    )
    print(format_table(rows, tuple(rows[0])))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dataclasses.asdict(p) | {"total": p.total} for p in plans], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
