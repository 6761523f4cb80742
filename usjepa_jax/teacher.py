"""The frozen teacher: export an encoder, load it back, hash it, embed images with it.

An exported encoder is a directory with ``model.json`` (the ``VisionTransformer`` arguments and the input
normalisation) and ``params/`` (an orbax PyTree checkpoint of the encoder parameters). Every training run exports
its final encoder to ``<workdir>/encoder``; the stage-1 pixel teacher of a US-JEPA run is
``<workdir>/teacher/encoder``. Teachers are loaded once, never differentiated, never donated, never written into
train checkpoints: runs record the path and the content hash instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from usjepa_jax.models.vit import VisionTransformer

MODEL_FILE = "model.json"
PARAMS_DIR = "params"


@dataclasses.dataclass(frozen=True)
class FrozenTeacher:
    """A teacher encoder with its parameters and its input convention.

    ``embed(params, images)`` maps uint8 images ``[B, H, W, 1]`` to patch embeddings ``[B, N, width]``
    (grayscale replicated to ``in_channels``, then ``(x / 255 - mean) / std``).
    """

    module: VisionTransformer
    params: Any
    in_channels: int
    mean: float
    std: float
    path: str
    content_hash: str

    @property
    def width(self) -> int:
        return self.module.width

    def embed(self, params: Any, images: jax.Array) -> jax.Array:
        x = normalize_images(images, self.mean, self.std, self.module.dtype)
        if self.in_channels != x.shape[-1]:
            x = jnp.broadcast_to(x, x.shape[:-1] + (self.in_channels,))
        tokens, _ = self.module.apply({"params": params}, x)
        return tokens


def normalize_images(images: jax.Array, mean: float, std: float, dtype: Any = jnp.float32) -> jax.Array:
    """uint8 ``[B, H, W, C]`` -> ``(x / 255 - mean) / std`` in ``dtype`` (done on device: uint8 crosses PCIe)."""
    return ((images.astype(jnp.float32) / 255.0 - mean) / std).astype(dtype)


def params_hash(params: Any) -> str:
    """SHA-256 over the leaf paths, shapes, dtypes and bytes of a parameter tree (host copy)."""
    digest = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(params), key=lambda kv: jax.tree_util.keystr(kv[0])):
        arr = np.asarray(jax.device_get(leaf))
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(str((arr.shape, arr.dtype.str)).encode())
        digest.update(np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest()


def export_encoder(directory: str | Path, module: VisionTransformer, params: Any, *, mean: float, std: float,
                   in_channels: int = 1) -> str:
    """Write an encoder (process 0 writes; call on every process). Returns its content hash."""
    directory = Path(directory).absolute()
    params = jax.device_get(params)
    content_hash = params_hash(params)
    spec = dict(vit=dict(width=module.width, depth=module.depth, mlp_dim=module.mlp_dim,
                         num_heads=module.num_heads, patch_size=module.patch_size, posemb=module.posemb,
                         class_token=module.class_token),
                in_channels=in_channels, mean=mean, std=std, content_hash=content_hash)
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save(directory / PARAMS_DIR, params, force=True)
    if jax.process_index() == 0:
        (directory / MODEL_FILE).write_text(json.dumps(spec, indent=2))
    return content_hash


def is_exported_encoder(directory: str | Path) -> bool:
    return (Path(directory) / MODEL_FILE).is_file() and (Path(directory) / PARAMS_DIR).is_dir()


def load_teacher(path: str | Path, *, dtype: Any = jnp.float32, remat: bool = False) -> FrozenTeacher:
    """Load an exported encoder directory as a frozen teacher (parameters as host numpy arrays)."""
    directory = Path(path).absolute()
    if not is_exported_encoder(directory):
        raise FileNotFoundError(
            f"teacher.checkpoint={str(path)!r}: not an exported encoder directory (expected {MODEL_FILE} and "
            f"{PARAMS_DIR}/ inside, as written to <workdir>/encoder by every training run).")
    spec = json.loads((directory / MODEL_FILE).read_text())
    module = VisionTransformer(**spec["vit"], remat=remat, dtype=dtype)
    with ocp.PyTreeCheckpointer() as ckptr:
        params = ckptr.restore(directory / PARAMS_DIR)
    params = jax.tree.map(np.asarray, params)
    content_hash = params_hash(params)
    if spec.get("content_hash") not in (None, content_hash):
        raise ValueError(f"Teacher {directory}: parameters do not match the content hash in {MODEL_FILE} "
                         f"({spec['content_hash'][:12]} recorded, {content_hash[:12]} found); the files changed.")
    return FrozenTeacher(module, params, spec.get("in_channels", 1), spec["mean"], spec["std"], str(directory),
                         content_hash)
