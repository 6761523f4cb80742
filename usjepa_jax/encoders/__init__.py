"""Encoder checkpoints: our own format, import from timm / I-JEPA / MAE, export, hashing, the target cache.

Every encoder this project trains, imports or evaluates goes through here, and there is one way to load one:
``load_encoder(path) -> FrozenEncoder`` (module + host parameters + input convention + content hash). ``path``
may be

- an exported encoder directory (``model.json`` + ``params/``, an orbax PyTree checkpoint), as every training
  run writes to ``<workdir>/encoder`` (and ``encoder_best``; the stage-1 teacher to ``<workdir>/teacher/encoder``);
- a training run's workdir (its ``encoder/``) or one of its train checkpoints, ``<workdir>/checkpoints/STEP``
  (the student encoder of that step; the architecture comes from the config saved in the checkpoint);
- a ViT state dict from elsewhere (``convert.py`` maps the names, ``formats.py`` reads the files): timm / I-JEPA
  / MAE layouts as ``.safetensors``, ``.npz`` or PyTorch ``.pth/.pt/.bin`` (``weights_only=True``, torch needed
  for these only), or a directory holding one of ``WEIGHT_FILES`` (e.g. a Hugging Face timm snapshot).

``read_encoder`` is the host-only part (numpy parameters and module arguments, no module built), used by the
CLI. A frozen teacher is loaded once, never differentiated, never donated, never written into train checkpoints:
runs record its path and content hash instead. ``python -m usjepa_jax.encoders convert|export|inspect|cache``
converts once to an exported encoder, writes ours as a timm state dict, prints what a checkpoint holds, or
precomputes a teacher's targets (``cache.py``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from usjepa_jax import checkpointing, storage
from usjepa_jax import config as config_lib
from usjepa_jax.encoders import convert, formats
from usjepa_jax.errors import UserError
from usjepa_jax.layout import CHECKPOINTS_DIR, ENCODER_DIR, MODEL_FILE, PARAMS_DIR
from usjepa_jax.models.vit import VisionTransformer

# Input normalisation of imported checkpoints when neither the caller nor a sidecar JSON says (timm's ImageNet
# default, which I-JEPA and MAE use; timm's augreg ViTs use 0.5/0.5: pass --mean/--std for those).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Weight files looked for, in order, when a checkpoint path is a directory that is not an exported encoder.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.npz", "model.pth", "checkpoint.pth")

Stat = float | tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class FrozenEncoder:
    """An encoder with its parameters and its input convention: a frozen teacher, or an encoder to evaluate.

    ``embed(params, images)`` maps uint8 images ``[B, H, W, 1]`` to patch embeddings ``[B, N, width]``
    (grayscale replicated to ``in_channels``, then ``(x / 255 - mean) / std`` with per-channel or scalar
    ``mean``/``std``).
    """

    module: VisionTransformer
    params: Any
    in_channels: int
    mean: Stat
    std: Stat
    path: str
    content_hash: str

    @property
    def width(self) -> int:
        return self.module.width

    def embed(self, params: Any, images: jax.Array) -> jax.Array:
        if self.in_channels != images.shape[-1]:
            images = jnp.broadcast_to(images, images.shape[:-1] + (self.in_channels,))
        x = normalize_images(images, self.mean, self.std, self.module.dtype)
        tokens, _ = self.module.apply({"params": params}, x)
        return tokens


def normalize_images(images: jax.Array, mean: Stat, std: Stat, dtype: Any = jnp.float32) -> jax.Array:
    """uint8 ``[B, H, W, C]`` -> ``(x / 255 - mean) / std`` in ``dtype`` (done on device: uint8 crosses PCIe).

    ``mean``/``std`` are scalars or per-channel sequences (broadcast over the last axis).
    """
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
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


def _stat(value: Any) -> Stat:
    """JSON / CLI value -> float or tuple of floats (a one-element sequence becomes a float)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        values = tuple(float(v) for v in value)
        return values[0] if len(values) == 1 else values
    return float(value)


def export_encoder(directory: str | Path, module: VisionTransformer, params: Any, *, mean: Stat, std: Stat,
                   in_channels: int = 1, image_size: int | Sequence[int] | None = None,
                   source: dict[str, Any] | None = None) -> str:
    """Write an encoder (process 0 writes; call on every process). Returns its content hash.

    ``image_size`` (the resolution it was trained at) and ``source`` (where an imported encoder came from) are
    recorded in ``model.json`` when given.
    """
    directory = storage.absolute(directory)
    params = jax.device_get(params)
    content_hash = params_hash(params)
    mean, std = _stat(mean), _stat(std)
    spec = {"vit": {"width": module.width, "depth": module.depth, "mlp_dim": module.mlp_dim,
                         "num_heads": module.num_heads, "patch_size": module.patch_size, "posemb": module.posemb,
                         "class_token": module.class_token},
                "in_channels": in_channels, "mean": mean, "std": std, "content_hash": content_hash}
    if image_size is not None:
        spec["image_size"] = image_size if isinstance(image_size, int) else list(image_size)
    if source:
        spec["source"] = source
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save(directory / PARAMS_DIR, params, force=True)
    if jax.process_index() == 0:
        (directory / MODEL_FILE).write_text(json.dumps(spec, indent=2))
    return content_hash


def is_exported_encoder(directory: str | Path) -> bool:
    directory = storage.path(directory)
    return (directory / MODEL_FILE).is_file() and (directory / PARAMS_DIR).is_dir()


def read_exported_encoder(directory: str | Path) -> tuple[dict[str, Any], Any]:
    """(``model.json`` as a dict, params as host numpy arrays), the content hash verified."""
    directory = storage.absolute(directory)
    spec = json.loads((directory / MODEL_FILE).read_text())
    with ocp.PyTreeCheckpointer() as ckptr:
        params = ckptr.restore(directory / PARAMS_DIR)
    params = jax.tree.map(np.asarray, params)
    content_hash = params_hash(params)
    if spec.get("content_hash") not in (None, content_hash):
        raise ValueError(f"Encoder {directory}: parameters do not match the content hash in {MODEL_FILE} "
                         f"({spec['content_hash'][:12]} recorded, {content_hash[:12]} found); the files changed.")
    spec["content_hash"] = content_hash
    return spec, params


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """Model facts next to a weight file: ``<stem>.json`` (our export / fixtures) or ``config.json`` (timm on
    the Hugging Face hub). Returns a subset of ``num_heads``, ``image_size``, ``mean``, ``std``."""
    path = storage.path(path)
    for candidate in (path.with_suffix(".json"), path.parent / "config.json"):
        if candidate.is_file() and candidate != path:
            try:
                meta = json.loads(candidate.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if not isinstance(meta, dict):
                continue
            args = meta.get("model_args") or {}
            cfg = meta.get("pretrained_cfg") or {}
            found = {}
            if "num_heads" in args:
                found["num_heads"] = int(args["num_heads"])
            elif isinstance(meta.get("architecture"), str) and convert.heads_of_timm_name(meta["architecture"]):
                found["num_heads"] = convert.heads_of_timm_name(meta["architecture"])  # hub configs: no model_args
            if "img_size" in args:
                found["image_size"] = args["img_size"]
            elif "input_size" in cfg:
                found["image_size"] = list(cfg["input_size"][-2:])
            for key in ("mean", "std"):
                if key in cfg:
                    found[key] = _stat(cfg[key])
            if found:
                found["sidecar"] = str(candidate)
                return found
    return {}


def _resolve_weight_file(path: Path) -> Path:
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(
            f"encoder checkpoint {str(path)!r}: a directory that is neither a run, an exported encoder "
            f"({MODEL_FILE} and {PARAMS_DIR}/ inside), a train checkpoint nor holds one of {WEIGHT_FILES}.")
    if not path.is_file():
        raise FileNotFoundError(
            f"encoder checkpoint {str(path)!r} does not exist (expected an exported encoder directory, as written "
            f"to <workdir>/encoder by every training run, or a .safetensors/.npz/.pth ViT checkpoint).")
    return path


@dataclasses.dataclass
class EncoderWeights:
    """Everything ``read_encoder`` found: the module arguments, params, input convention and provenance."""

    vit: dict[str, Any]
    params: Any
    in_channels: int
    mean: Stat
    std: Stat
    image_size: Any
    path: str
    source: dict[str, Any]


def is_train_checkpoint(path: str | Path) -> bool:
    """``<workdir>/checkpoints/STEP``: a step directory of a training run's orbax checkpoints."""
    path = storage.path(path)
    return path.parent.name == CHECKPOINTS_DIR and path.name.isdigit() and path.is_dir()


def _read_train_checkpoint(path: Path, mean: Stat | None, std: Stat | None) -> EncoderWeights:
    """The student encoder of one train checkpoint, restored as saved (no trainer built); its architecture and
    input normalisation come from the config recorded in the checkpoint's metadata."""
    step = int(path.name)
    manager = checkpointing.make_manager(path.parent, async_save=False)
    try:
        if step not in manager.all_steps():
            raise FileNotFoundError(f"No checkpoint at step {step} in {path.parent} "
                                    f"(available: {sorted(manager.all_steps())}).")
        config = json.loads(checkpointing.restore_meta(manager, step)["config"])
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                              manager.item_metadata(step)["state"])
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    finally:
        manager.close()
    vit = config_lib.encoder_kwargs(ml_collections.ConfigDict(config["model"]))
    vit.pop("remat")
    data = config["data"]
    return EncoderWeights(vit, jax.tree.map(np.asarray, state["params"]["encoder"]), 1,
                          _stat(data["mean"] if mean is None else mean), _stat(data["std"] if std is None else std),
                          data["image_size"], f"{path.parent}@{step}", {"format": "train-checkpoint", "step": step})


def _square(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    return (int(size), int(size)) if isinstance(size, int | float) else (int(size[0]), int(size[1]))


def read_encoder(path: str | Path, *, image_size: int | Sequence[int] | None = None, num_heads: int | None = None,
                 mean: Stat | None = None, std: Stat | None = None, fmt: str = "auto",
                 resample: str = "bicubic") -> EncoderWeights:
    """Read any supported checkpoint (see the module docstring) into numpy params + module arguments."""
    path = storage.absolute(path)
    if not is_exported_encoder(path) and is_exported_encoder(path / ENCODER_DIR):
        path = path / ENCODER_DIR  # a run's workdir: its final encoder
    if is_train_checkpoint(path):
        return _read_train_checkpoint(path, mean, std)
    if is_exported_encoder(path):
        spec, params = read_exported_encoder(path)
        vit = dict(spec["vit"])
        if num_heads is not None and num_heads != vit["num_heads"]:
            raise ValueError(f"Encoder {path}: num_heads={num_heads} given, but {MODEL_FILE} records "
                             f"{vit['num_heads']}.")
        src_size = _square(spec.get("image_size"))
        size = _square(image_size)
        notes = []
        if vit["posemb"] == "learn" and size is not None:
            p = vit["patch_size"]
            pos = params["pos_embed"].reshape(-1, vit["width"])
            src_grid = convert._grid_of(len(pos), None if src_size is None else (src_size[0] // p,
                                                                                 src_size[1] // p))
            dst_grid = (size[0] // p, size[1] // p)
            if src_grid is None:
                raise ValueError(f"Encoder {path}: pos_embed of {len(pos)} tokens is not a square grid and "
                                 f"{MODEL_FILE} records no image_size.")
            if src_grid != dst_grid:
                params = dict(params, pos_embed=convert.resample_posemb(pos, src_grid, dst_grid, resample)[None])
                notes.append(f"learned pos_embed resampled {src_grid} -> {dst_grid} ({resample})")
        source = dict(spec.get("source") or {}, format="exported", notes=notes)
        return EncoderWeights(vit, params, spec.get("in_channels", 1), _stat(spec["mean"] if mean is None else mean),
                             _stat(spec["std"] if std is None else std), list(size or src_size or []) or None,
                             str(path), source)
    weight_file = _resolve_weight_file(path)
    sidecar = read_sidecar(weight_file)
    state = formats.read_state_dict(weight_file, fmt)
    src_size = sidecar.get("image_size")
    imported = convert.from_state_dict(
        state, num_heads=num_heads if num_heads is not None else sidecar.get("num_heads"),
        image_size=_square(image_size), src_image_size=_square(src_size), resample=resample)
    vit = dict(imported.vit)
    in_channels = vit.pop("in_channels")
    mean = _stat(mean if mean is not None else sidecar.get("mean", IMAGENET_MEAN[:in_channels] if in_channels == 3
                                                             else 0.5))
    std = _stat(std if std is not None else sidecar.get("std", IMAGENET_STD[:in_channels] if in_channels == 3
                                                          else 0.5))
    for name, stat in (("mean", mean), ("std", std)):
        if isinstance(stat, tuple) and len(stat) != in_channels:
            raise ValueError(f"Encoder {weight_file}: {name}={stat} has {len(stat)} channels, the checkpoint's "
                             f"patch_embed takes {in_channels}.")
    source = {"file": str(weight_file), "format": formats.detect_format(weight_file) if fmt == "auto" else fmt,
                  "scheme": imported.scheme, "notes": imported.notes, "ignored_keys": len(imported.ignored),
                  "sidecar": sidecar.get("sidecar")}
    return EncoderWeights(vit, imported.params, in_channels, mean, std, list(imported.image_size), str(weight_file),
                         source)


def check_params_fit(module: VisionTransformer, params: Any, in_channels: int, image_size: Any, where: str) -> None:
    """Raise ``UserError`` naming ``where`` when ``params`` are not ``module``'s (e.g. a ``model.json`` recording
    another width than its ``params/`` hold): found at load, from shapes alone, not at a training run's first step.
    """
    size = _square(image_size)
    if size is None:  # learned embeddings: their own grid, taken as square; any grid fits a sin-cos embedding
        side = math.isqrt(np.shape(params["pos_embed"])[1]) if "pos_embed" in params else 1
        size = (side * module.patch_size,) * 2
    images = jax.ShapeDtypeStruct((1, *size, in_channels), jnp.float32)
    wanted = jax.eval_shape(module.init, jax.random.key(0), images)["params"]
    mismatch = checkpointing.tree_mismatch(params, wanted, show=2, saved="weights", wanted="architecture", dtypes=False)
    if mismatch:
        raise UserError(f"Encoder {where}: its weights do not fit the architecture it records (width {module.width}, "
                        f"depth {module.depth}, patch {module.patch_size}): {'; '.join(mismatch)}.")


def load_encoder(path: str | Path, *, dtype: Any = jnp.float32, remat: bool = False,
                 image_size: int | Sequence[int] | None = None, num_heads: int | None = None,
                 mean: Stat | None = None, std: Stat | None = None, fmt: str = "auto",
                 resample: str = "bicubic") -> FrozenEncoder:
    """The one way to load an encoder (parameters as host numpy arrays): ``path`` is any of the module docstring's
    list (exported encoder, run workdir, train checkpoint step, imported ViT state dict or snapshot directory).

    ``dtype``/``remat``: how the module computes. ``image_size``: the resolution it will see; learned position
    embeddings are resampled to its grid (``resample``: bicubic or bilinear, see ``convert.resample_posemb``).
    ``num_heads``, ``mean``, ``std`` override what the checkpoint (or its sidecar ``<stem>.json`` /
    ``config.json``) says; the defaults for imported checkpoints are ``convert.default_num_heads`` and ImageNet's
    mean/std. Bad input raises FileNotFoundError / ValueError naming the file and the parameter.
    """
    enc = read_encoder(path, image_size=image_size, num_heads=num_heads, mean=mean, std=std, fmt=fmt,
                       resample=resample)
    module = VisionTransformer(**enc.vit, remat=remat, dtype=dtype)
    check_params_fit(module, enc.params, enc.in_channels, enc.image_size, enc.path)
    return FrozenEncoder(module, enc.params, enc.in_channels, enc.mean, enc.std, enc.path, params_hash(enc.params))
