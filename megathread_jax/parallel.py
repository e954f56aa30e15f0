"""Device mesh and shardings: the batch is split on a `data` axis, the train state replicated.

The same jitted step runs on one device, several, or several hosts; batch-norm statistics and
gradients are global because jit computes over the global (sharded) batch.
"""

from __future__ import annotations

import os
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


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A one-axis `data` mesh over `devices` (default: every device of every process)."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Host values (the same on every process) as arrays replicated over the mesh, also when the
    mesh spans several processes (where `jax.device_put` cannot place values on other hosts)."""
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = jax.make_array_from_process_local_data(sharding, np.asarray(jax.random.key_data(x)))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))

    return jax.tree.map(put, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec("data"))


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
