"""The teacher-target cache: the frozen teacher's patch embeddings, computed once per image, read back by index.

Because the teacher is frozen and the default pipeline is augmentation-free, the teacher's embedding of image
``i`` of a split never changes: ``python -m usjepa_jax.encoders cache`` runs the teacher once over every image of
the split (source indices ``0..num-1``, exactly as the pipeline produces them after ``ToModelInput``, no
augmentation, no masks) and stores ``[N, D]`` bfloat16 per image in ArrayRecord shards. Training with
``config.teacher.cache=DIR`` then reads the targets instead of running the teacher (whose weights are then never
loaded onto a device).

Layout of ``DIR``::

    cache.json                              the manifest (written last: a cache without one is incomplete)
    train-00000-of-00005.array_record ...   one record per image, record ``i`` = image ``i`` of the split,
    val-00000-of-00001.array_record         the raw bytes of a C-order bfloat16 ``[tokens, width]`` array

The manifest records the teacher (path, content hash, compute dtype), whether the embeddings were layer-normalised
(``normalized``), the data config that determines the images (``data``: source, image_size, synthetic settings,
seed) and per split the number of images and shards. ``check_compatible`` refuses a config whose images would
differ from the cached ones (augmentation on, another data config or seed, another teacher, more images).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from array_record.python import array_record_module

from usjepa_jax import objectives, run_log, sharding
from usjepa_jax.data.pipeline import build_dataset
from usjepa_jax.data.settings import SPLIT_STREAMS
from usjepa_jax.encoders import load_encoder, params_hash, read_encoder

MANIFEST = "cache.json"
FORMAT_VERSION = 1
KEY = "teacher_targets"  # the batch key the pipeline attaches
STORE_DTYPE = "bfloat16"
DEFAULT_IMAGES_PER_SHARD = 4096


def data_signature(data_config: ml_collections.ConfigDict, seed: int) -> dict[str, Any]:
    """What determines image ``i`` of a split (besides the split): JSON-normalised (tuples become lists)."""
    return json.loads(json.dumps({"source": data_config.source, "image_size": data_config.image_size,
                                  "synthetic": data_config.synthetic.to_dict(), "seed": seed}))


def split_size(data_config: ml_collections.ConfigDict, split: str) -> int:
    return data_config.num_train if split == "train" else data_config.num_val


def shard_name(split: str, shard: int, num_shards: int) -> str:
    return f"{split}-{shard:05d}-of-{num_shards:05d}.array_record"


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"config.teacher.cache={str(directory)!r} is not a teacher cache (no {MANIFEST}; an interrupted "
            f"write leaves none): write one with `python -m usjepa_jax.encoders cache --config=... --output "
            f"{directory}`.")
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------------ reading
class TeacherTargets(grain.transforms.Map):
    """Grain transform: ``element['teacher_targets'] = cache[element['index']]``, ``[tokens, width]``.

    Picklable (the ArrayRecord readers open lazily in each process); ``dtype`` is ``bfloat16`` (as stored,
    half the host-to-device traffic) or ``float32``.
    """

    def __init__(self, directory: str | Path, split: str, dtype: str = STORE_DTYPE):
        manifest = read_manifest(directory)
        if split not in manifest["splits"]:
            raise ValueError(f"Teacher cache {directory} holds no {split!r} split (it has "
                             f"{sorted(manifest['splits'])}): run the cache command with --split {split}.")
        entry = manifest["splits"][split]
        self.paths = [str(Path(directory) / name) for name in entry["shards"]]
        self.num_images = entry["num_images"]
        self.shape = (manifest["tokens"], manifest["width"])
        self.dtype = dtype
        self._source = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_source": None}

    @property
    def source(self) -> grain.sources.ArrayRecordDataSource:
        if self._source is None:
            self._source = grain.sources.ArrayRecordDataSource(self.paths)
        return self._source

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self.num_images:
            raise IndexError(f"image {index} is not in the teacher cache ({self.num_images} images)")
        record = self.source[int(index)]
        return np.frombuffer(record, jnp.bfloat16).reshape(self.shape).astype(jnp.dtype(self.dtype), copy=False)

    def map(self, element: dict) -> dict:
        return {**element, KEY: self[int(element["index"])]}


@dataclasses.dataclass(frozen=True)
class TeacherCache:
    """Stands in for a ``FrozenEncoder`` when training from cached targets: no module, no parameters.

    ``path``/``content_hash`` are the teacher's (recorded in checkpoints as for a loaded teacher).
    """

    directory: str
    path: str
    content_hash: str
    width: int
    tokens: int
    patch_size: int
    normalized: bool
    manifest: dict = dataclasses.field(default_factory=dict, repr=False)
    params: Any = None  # nothing is placed on devices

    @classmethod
    def open(cls, directory: str | Path) -> TeacherCache:
        directory = str(Path(directory).absolute())
        m = read_manifest(directory)
        if m.get("format") != FORMAT_VERSION:
            raise ValueError(f"Teacher cache {directory}: format {m.get('format')}, expected {FORMAT_VERSION}.")
        t = m["teacher"]
        return cls(directory, t["path"], t["content_hash"], m["width"], m["tokens"], m["patch_size"],
                   m["normalized"], m)

    def targets(self, split: str, dtype: str = STORE_DTYPE) -> TeacherTargets:
        return TeacherTargets(self.directory, split, dtype)


def _named(prefix: str, saved: Any, current: Any) -> list[tuple[str, Any, Any]]:
    """Differing leaves of two JSON trees, as (dotted key, saved, current)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for k in sorted(set(saved) | set(current)):
            out += _named(f"{prefix}.{k}", saved.get(k, "<missing>"), current.get(k, "<missing>"))
        return out
    return [] if saved == current else [(prefix, saved, current)]


def validation_active(config: ml_collections.ConfigDict) -> bool:
    """Whether training computes a validation loss (``train.validation_batches`` is non-empty)."""
    return config.eval_every > 0 and config.data.num_val >= config.optim.batch_size


def check_compatible(config: ml_collections.ConfigDict, manifest: dict[str, Any],
                     directory: str = "") -> None:
    """Raise ValueError (naming the config key) unless the cached targets are those of the images this config's
    student sees, from the teacher it names. Reads no teacher weights unless ``teacher.checkpoint`` is set."""
    where = f"the teacher cache {directory or config.teacher.cache}"
    if config.data.augment.enabled:
        raise ValueError(
            f"config.data.augment.enabled=True cannot be used with config.teacher.cache: the augmentations "
            f"(random resized crop, flips, blur, speckle, contrast) change every image on the fly, but {where} "
            f"holds the teacher's embeddings of the un-augmented images. Set data.augment.enabled=False or "
            f"drop teacher.cache (the teacher then runs every step).")
    current = data_signature(config.data, config.seed)
    for key, saved, now in _named("", manifest["data"], current):
        key = key.lstrip(".")
        name = "seed" if key == "seed" else f"data.{key}"
        raise ValueError(
            f"config.{name}={now!r} differs from {where}, computed with {name}={saved!r}: its targets are the "
            f"embeddings of other images. Use the cache's value or recompute the cache for this config.")
    needed = ["train"] + (["val"] if validation_active(config) else [])
    for split in needed:
        num = split_size(config.data, split)
        key = "data.num_train" if split == "train" else "data.num_val"
        if split not in manifest["splits"]:
            raise ValueError(
                f"{where} holds no {split!r} split, but config.{key}={num} images need targets"
                + (" for the validation loss (set eval_every=0 to turn it off, or run the cache command with "
                   "--split val)" if split == "val" else "") + ".")
        cached = manifest["splits"][split]["num_images"]
        if num > cached:
            raise ValueError(f"config.{key}={num} exceeds {where}, which holds {cached} {split} images: "
                             f"lower {key} or recompute the cache.")
    if manifest["normalized"] and not config.loss.normalize_targets:
        raise ValueError(f"config.loss.normalize_targets=False, but {where} holds layer-normalised targets "
                         f"(written with --normalize): use a raw cache.")
    if config.teacher.checkpoint:
        enc = read_encoder(config.teacher.checkpoint, image_size=config.data.image_size)  # host memory only
        content_hash = params_hash(enc.params)
        if content_hash != manifest["teacher"]["content_hash"]:
            raise ValueError(
                f"config.teacher.checkpoint={config.teacher.checkpoint!r} (content hash {content_hash[:12]}) is "
                f"not the teacher of {where} ({manifest['teacher']['path']}, hash "
                f"{manifest['teacher']['content_hash'][:12]}). Drop teacher.checkpoint or recompute the cache.")


def open_for_training(config: ml_collections.ConfigDict) -> TeacherCache:
    """The cache of ``config.teacher.cache``, checked against ``config`` (see ``check_compatible``)."""
    cache = TeacherCache.open(config.teacher.cache)
    check_compatible(config, cache.manifest, cache.directory)
    return cache


# ------------------------------------------------------------------------------------------------ writing
def write_cache(config: ml_collections.ConfigDict, output: str | Path, *, teacher_path: str | None = None,
                splits: Sequence[str] = ("train", "val"), batch_size: int = 64, normalize: bool = False,
                images_per_shard: int = DEFAULT_IMAGES_PER_SHARD, progress: bool = True) -> dict[str, Any]:
    """Run the frozen teacher once over every image of ``splits`` and write the cache; returns the manifest.

    The teacher is ``teacher_path`` or ``config.teacher.checkpoint``, loaded as training loads it (compute dtype
    ``config.model.dtype``, learned position embeddings resampled to ``config.data.image_size``). ``normalize``
    stores layer-normalised embeddings (over features, no affine, as the loss does) instead of raw ones. Writing
    into a directory that already holds a compatible cache adds (or replaces) the given splits.
    """
    teacher_path = teacher_path or config.teacher.checkpoint
    if not teacher_path:
        raise ValueError("No teacher: pass --teacher PATH or --config.teacher.checkpoint=PATH (an exported encoder "
                         "such as RUN/teacher/encoder, or a ViT checkpoint file).")
    for split in splits:
        if split not in SPLIT_STREAMS:
            raise ValueError(f"split={split!r}: expected one of {tuple(SPLIT_STREAMS)}.")
    output = Path(output).absolute()
    teacher = load_encoder(teacher_path, dtype=jnp.dtype(config.model.dtype), image_size=config.data.image_size)
    grid = config.data.image_size // teacher.module.patch_size
    tokens = grid * grid
    manifest = {"format": FORMAT_VERSION, "dtype": STORE_DTYPE, "normalized": bool(normalize), "tokens": tokens,
                "width": teacher.width, "patch_size": teacher.module.patch_size,
                "teacher": {"path": teacher.path, "content_hash": teacher.content_hash,
                            "dtype": config.model.dtype, "image_size": config.data.image_size},
                "data": data_signature(config.data, config.seed), "splits": {}}
    if (output / MANIFEST).is_file():  # add splits to an existing cache only when everything else agrees
        old = read_manifest(output)
        differ = _named("", {k: v for k, v in old.items() if k not in ("splits",)},
                        {k: v for k, v in manifest.items() if k not in ("splits",)})
        if differ:
            key, saved, now = differ[0]
            raise ValueError(f"{output} already holds a teacher cache with {key.lstrip('.')}={saved!r} (now "
                             f"{now!r}): write to a new directory.")
        manifest["splits"] = {k: v for k, v in old["splits"].items() if k not in splits}
    output.mkdir(parents=True, exist_ok=True)
    if (output / MANIFEST).exists():
        (output / MANIFEST).unlink()  # incomplete until rewritten at the end

    mesh = sharding.make_mesh(-1, 1)
    batch_size = math.ceil(batch_size / mesh.size) * mesh.size  # every device gets whole rows
    params = jax.device_put(teacher.params, sharding.replicated(mesh))

    @jax.jit
    def embed(params, images):
        out = teacher.embed(params, images)
        if normalize:
            out = objectives.layer_norm_no_affine(out.astype(jnp.float32))
        return out.astype(STORE_DTYPE)

    data_config = ml_collections.ConfigDict(config.data.to_dict())
    data_config.augment.enabled = False  # the student of a cached run sees un-augmented images
    for split in splits:
        num = split_size(config.data, split)
        num_shards = max(1, math.ceil(num / images_per_shard))
        names = [shard_name(split, k, num_shards) for k in range(num_shards)]
        for stale in output.glob(f"{split}-*.array_record"):
            stale.unlink()
        dataset = build_dataset(data_config, global_batch_size=batch_size, split=split, seed=config.seed,
                                num_epochs=1, drop_remainder=False, shuffle=False, process_index=0,
                                process_count=1)
        writer, shard, written = None, -1, 0
        bar = run_log.progress(num, f"[{split}]", "img", enabled=progress)

        def write(out: jax.Array, indices: np.ndarray, names: list[str] = names) -> None:
            nonlocal writer, shard, written
            rows = np.asarray(out)[: len(indices)]
            for index, row in zip(indices, rows, strict=True):
                if index != written:
                    raise RuntimeError(f"pipeline order: expected image {written}, got {index}")
                if written // images_per_shard != shard:
                    if writer is not None:
                        writer.close()
                    shard = written // images_per_shard
                    writer = array_record_module.ArrayRecordWriter(str(output / names[shard]), "group_size:1")
                writer.write(np.ascontiguousarray(row).tobytes())
                written += 1
            bar.update(len(indices))

        pending = None
        for batch in dataset:
            images, indices = batch["image"], batch["index"]
            if len(indices) < batch_size:  # pad the last batch: one compiled shape
                images = np.concatenate([images, np.zeros((batch_size - len(indices),) + images.shape[1:],
                                                          images.dtype)])
            out = embed(params, jax.device_put(images, sharding.batch_sharding(mesh)))  # async dispatch
            if pending is not None:
                write(*pending)  # the previous batch, while this one computes
            pending = (out, indices)
        if pending is not None:
            write(*pending)
        if writer is not None:
            writer.close()
        bar.close()
        if written != num:
            raise RuntimeError(f"[{split}] wrote {written} images, expected {num}")
        manifest["splits"][split] = {"num_images": num, "images_per_shard": images_per_shard, "shards": names,
                                     "bytes_per_image": tokens * teacher.width * 2}
    tmp = output / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(output / MANIFEST)
    return manifest
