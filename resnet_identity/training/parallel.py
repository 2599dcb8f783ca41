"""Devices, meshes and shardings: `jax.jit` over a `Mesh` with the batch on a `data` axis.

Parameters and optimiser state are replicated; batches are split over the `data` axis.
Each process feeds its own slice of the global batch, assembled into one global array
with `jax.make_array_from_process_local_data`. No `pmap`.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"

# Environment variables that mark a multi-process launch (Cloud TPU pods, SLURM, or ours).
_MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES")


def maybe_initialize_distributed(requested: bool | None = None) -> bool:
    """Calls `jax.distributed.initialize()` if `requested`, never if `requested` is False
    (e.g. one process of a SLURM job that should run alone), and otherwise (None) when the
    environment is multi-host.

    Returns whether it initialised. Must run before any other JAX call touches devices.
    """
    single_slurm_task = os.environ.get("SLURM_NTASKS") == "1"  # SLURM sets it for one-task jobs too
    from_env = any(os.environ.get(k) for k in _MULTIHOST_ENV) and not single_slurm_task
    if not (requested if requested is not None else from_env):
        return False
    if jax.distributed.is_initialized():
        return True
    jax.distributed.initialize()
    return True


def create_mesh() -> Mesh:
    """A 1-D mesh of every device of every process, named `data`."""
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles each process's slice of a batch into one global, data-sharded array."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def to_host(tree: Any) -> Any:
    """Fetches a (replicated) tree to host numpy, working in multi-process runs too."""
    return jax.tree.map(
        lambda a: np.asarray(jax.device_get(a.addressable_data(0)) if isinstance(a, jax.Array) else a), tree
    )
