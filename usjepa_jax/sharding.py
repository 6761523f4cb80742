"""Device mesh, parameter sharding rules and batch placement.

The mesh has two axes, ``('data', 'fsdp')``. The global batch is split over both (every device sees a different
slice of the batch). Parameters (and the optimizer state, and the frozen teacher) follow one rule per leaf:

- ``replicate`` (default, data parallelism): every device holds every parameter;
- ``fsdp``: each leaf is split along its largest dimension divisible by the ``fsdp`` axis size over that axis
  (ZeRO-3 style); leaves with no such dimension, and scalars, are replicated.

Rules depend on shapes only, so the shardings of the train state are derived from ``jax.eval_shape`` before
anything is allocated, and a checkpoint restores into the shardings of the *current* mesh whatever mesh wrote it.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")
STRATEGIES = ("replicate", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices: list[jax.Device] | None = None) -> Mesh:
    """Mesh ``('data', 'fsdp')`` of shape ``(data, fsdp)``; ``-1`` takes all devices left over.

    Axis types are Auto (linen's sharding constraints want Auto; ``jax.make_mesh`` defaults to Explicit).
    """
    devices = list(jax.devices()) if devices is None else list(devices)
    n = len(devices)
    if data == -1 and fsdp == -1:
        raise ValueError("mesh: at most one of mesh.data and mesh.fsdp may be -1.")
    if data == -1:
        data = n // fsdp if fsdp > 0 and n % fsdp == 0 else 0
    if fsdp == -1:
        fsdp = n // data if data > 0 and n % data == 0 else 0
    if data < 1 or fsdp < 1 or data * fsdp > n or (data * fsdp < n and jax.process_count() > 1):
        raise ValueError(f"mesh: data={data} x fsdp={fsdp} does not fit the {n} available devices.")
    devices = devices[: data * fsdp]  # a single process may use fewer devices than it has (tests, debugging)
    # make_mesh orders devices by the physical topology (matters on TPU slices).
    return jax.make_mesh((data, fsdp), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=devices)


def leaf_spec(shape: tuple[int, ...], strategy: str, fsdp_size: int) -> PartitionSpec:
    """PartitionSpec of one parameter-like leaf of ``shape`` under ``strategy``."""
    if strategy == "replicate" or fsdp_size == 1 or not shape:
        return PartitionSpec()
    if strategy != "fsdp":
        raise ValueError(f"sharding.strategy={strategy!r}: expected one of {STRATEGIES}.")
    # Largest dimension that divides evenly; ties go to the earliest dimension.
    candidates = [(size, -axis) for axis, size in enumerate(shape) if size % fsdp_size == 0]
    if not candidates:
        return PartitionSpec()
    axis = -max(candidates)[1]
    spec: list[Any] = [None] * len(shape)
    spec[axis] = "fsdp"
    return PartitionSpec(*spec)


def tree_shardings(abstract_tree: Any, mesh: Mesh, strategy: str) -> Any:
    """NamedShardings for every leaf of an abstract (``jax.ShapeDtypeStruct``) or concrete tree."""
    fsdp_size = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, leaf_spec(tuple(np.shape(x)), strategy, fsdp_size)),
                        abstract_tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble the global batch from this process's slice (each process passes its own rows)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def global_min_max(local: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """Per-process ``{name: (min, max)}`` -> the min of the mins and the max of the maxes over all processes:
    every process gets the same answer (e.g. ``masks.valid_counts``, so every process picks the same padding
    bucket, whatever the number of processes)."""
    if jax.process_count() == 1:
        return local
    names = sorted(local)
    gathered = multihost_utils.process_allgather(np.array([local[k] for k in names]))  # [P, names, 2]
    return {k: (int(gathered[:, i, 0].min()), int(gathered[:, i, 1].max())) for i, k in enumerate(names)}


def backend_report(expect_accelerator: bool) -> tuple[str, str | None]:
    """(what jax found, a warning or None): the warning when an accelerator-sized config runs on a CPU backend.

    On a GPU or TPU machine that is nearly always a CPU-only jax install (``pip install jax``), which trains on
    the CPU without a word: say so and how to install the accelerator build.
    """
    devices = jax.devices()
    kinds = ", ".join(sorted({d.device_kind for d in devices}))
    found = (f"jax {jax.__version__}, backend {jax.default_backend()}: {len(devices)} device(s) ({kinds}) over "
             f"{jax.process_count()} process(es), {jax.local_device_count()} local")
    if not expect_accelerator or jax.default_backend() != "cpu":
        return found, None
    bar = "!" * 100
    return found, (f"\n{bar}\nThis config is sized for an accelerator (expect_accelerator=True), but jax found only "
                   f"the CPU: training will be very slow.\nInstall jax's accelerator build (README, 'Set up and "
                   f"run'): pip install -e '.[cuda]' on NVIDIA GPUs, pip install -e '.[tpu]' on a Cloud TPU VM;\n"
                   f"check with: python -c 'import jax; print(jax.devices())'. On purpose? "
                   f"--config.expect_accelerator=False silences this.\n{bar}")
