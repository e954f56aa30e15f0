"""Device mesh and shardings: a (`data`, `fsdp`) mesh, the batch split over both axes, the train
state sharded along `fsdp` (replicated when it has one device).

The same jitted step runs on one device, several, or several hosts; batch-norm statistics and
gradients are global because jit computes over the global (sharded) batch, and XLA gathers the
sharded parameters where the step needs them whole.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def maybe_initialize_distributed() -> None:
    """Joins a multi-host run when `JAX_COORDINATOR_ADDRESS` is set.

    `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` give the rest; where unset, JAX detects them from the
    cluster (SLURM, Open MPI, Cloud TPU, ...).
    """
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not address or jax.distributed.is_initialized():
        return
    count, index = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes talk over TCP
    jax.distributed.initialize(address, int(count) if count else None, int(index) if index else None)


# Arrays smaller than this stay replicated under fsdp: gathering them would cost more than they save.
MIN_SHARDED_SIZE = 2**14
BATCH_AXES = ("data", "fsdp")


def make_mesh(devices: list[jax.Device] | None = None, fsdp: int = 1) -> Mesh:
    """A (`data`, `fsdp`) mesh over `devices` (default: every device of every process), `fsdp`
    devices along the second axis and the rest along the first. Devices stay in JAX's order, so
    each process's devices hold consecutive rows of the batch."""
    devices = np.asarray(devices if devices is not None else jax.devices())
    if fsdp < 1 or devices.size % fsdp:
        raise ValueError(f"fsdp={fsdp} does not divide the {devices.size} devices")
    return Mesh(devices.reshape(devices.size // fsdp, fsdp), BATCH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def fsdp_spec(shape: tuple[int, ...], fsdp: int) -> PartitionSpec:
    """The one sharding rule: an array of at least `MIN_SHARDED_SIZE` elements is split along
    `fsdp` on its largest dimension that `fsdp` divides (the first of equals); others replicate."""
    if fsdp == 1 or math.prod(shape) < MIN_SHARDED_SIZE:
        return PartitionSpec()
    divisible = [i for i, n in enumerate(shape) if n % fsdp == 0]
    if not divisible:
        return PartitionSpec()
    axis = max(divisible, key=lambda i: (shape[i], -i))
    return PartitionSpec(*(None,) * axis, "fsdp")


def state_shardings(tree: Any, mesh: Mesh) -> Any:
    """The sharding of each array (or `jax.ShapeDtypeStruct`) of `tree` under `fsdp_spec`."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp)), tree)


def place(tree: Any, shardings: Any) -> Any:
    """Host values (the same on every process) as arrays laid out by `shardings`, each device
    receiving only its own shard, also when the mesh spans several processes (where
    `jax.device_put` cannot place values on other hosts)."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def put(x, sharding):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree, shardings)


def bytes_on_first_device(tree: Any) -> int:
    """Bytes of `tree`'s arrays held by this process's first device (its shards, or whole copies)."""
    device = jax.local_devices()[0]
    return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards if s.device == device)


def keep_layout(step: Callable, shardings: Any) -> Callable:
    """`step(state, batch) -> (state, metrics)` whose new state keeps the layout `shardings`, so
    each compiled step takes and returns the state sharded alike. It keeps `step`'s name, which
    names the compiled program in profiles and in the compilation cache's logs."""

    @functools.wraps(step)
    def constrained(state, batch):
        new_state, metrics = step(state, batch)
        return jax.lax.with_sharding_constraint(new_state, shardings), metrics

    return constrained


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def shard_batch(mesh: Mesh, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """A global batch, identical on every process, as arrays sharded over the `data` axis.

    Each process contributes only its own rows.
    """
    sharding = batch_sharding(mesh)
    count, index = jax.process_count(), jax.process_index()
    out: dict[str, Any] = {}
    for name, array in batch.items():
        if array.shape[0] % mesh.size:
            raise ValueError(f"batch of {array.shape[0]} does not split over {mesh.size} devices")
        rows = array.shape[0] // count
        local = array[index * rows : (index + 1) * rows]
        out[name] = jax.make_array_from_process_local_data(sharding, local, array.shape)
    return out
