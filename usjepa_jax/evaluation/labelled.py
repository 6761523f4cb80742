"""Labelled evaluation tasks from real data: ``load_task(spec, ...) -> EvalData`` (train / val / test splits).

A task is ``PATH`` or ``NAME=PATH`` (the name defaults to the folder's or file's stem), in one of three layouts,
recognised from the path:

* **UltraBench** (``<dataset>_v<version>/`` with ``images/``, ``train_val.json``, ``test.json``, masks in
  ``masks/scan``; ``data/scanning.py`` reads it as is): ``test.json`` is the test split. Validation: the JSON's own
  sub-splits when ``train_val.json`` is ``{"train": [...], "val": [...]}`` (or its records carry ``"split"``);
  otherwise carved out of ``train_val`` by the rule below, because the paper does not publish one.
* **class folders** (the ImageFolder convention): ``ROOT/<class>/...`` (any depth below a class folder), or
  ``ROOT/<split>/<class>/...`` when the top-level folders are split names (train / val / test, or their
  aliases in ``SPLIT_NAMES``); missing splits are carved.
* **a list file** ``.csv`` (a header row with ``path`` and ``label`` columns, or their aliases in
  ``sources.PATH_KEYS`` / ``LABEL_KEYS``; optional ``split`` and ``group``) or ``.json`` (records with the same
  keys, or any UltraBench JSON shape). Relative paths are relative to the list file's folder.

Any readable frame file works in every layout (images, DICOM, NIfTI, cine video, HDF5, MetaImage): every frame
of a file is one example with the file's label.

**Splits never cut a recording**: the unit of every split is a *group*, by default one file (so the frames of a
video or volume are on one side), or the list's ``group`` column (e.g. a patient). A group's class is the most
frequent label of its files (the smallest on ties).

**The carving rule** (seeded, stratified, documented because results depend on it): for each class ``c`` in
sorted order, its groups sorted by name are permuted by ``numpy.random.default_rng([seed, salt, c])``
(``salt`` 0 for test, 1 for val) and the first ``round(fraction * n_c)`` go to the split, at least 1 and at most
``n_c - 1`` when ``n_c >= 2`` (none when ``n_c = 1``). Test is carved first (``test_fraction``, from all
groups without a split), then val (``val_fraction``) from what remains for training. Fractions and the seed are
``config.evals.labelled``.

**Labels**: integers (or integer strings) or class names, one kind per task; classes are the sorted distinct
labels, renumbered 0..K-1 (``class_names`` keeps the originals). A missing or unparsable label, a file listed
twice, or a class without an example in some split fails, naming the file and the label.

**Segmentation masks** (UltraBench's segmentation tasks; ``config.evals.labelled.mask``, e.g. ``structures`` or
``regions``, empty for a classification task): a record's mask is the JSON's ``mask`` key when the name is
``mask``, else its ``<name>_mask`` key (paths relative to the dataset folder, as UltraBench writes them), else the
file of the image's stem in ``masks/<name>/``. A record without one fails, naming it. Mask pixels are class values
(0 background); the task's classes are its sorted distinct values over all masks, renumbered 0..K-1 (a 0/255
mask is two classes). A mask goes through the image's own geometry (``preprocess.preprocess_with_labels``: the
same crop and padding, nearest resize) and lands in ``Split.segmentation``, which the dense probe reads; its
arrays are kept beside the prepared frames (``segmentation-<name>.npz``). A segmentation task without class
labels gets one class, ``all``. Image paths written relative to the dataset folder (``images/...``, as
UltraBench does) are accepted as well as paths relative to ``images/``.

**Preprocessing** is the pretraining recipe (``config.data.preprocess``: grayscale, inpainting, scan region,
percentile rescaling, crop, resize to the encoder's input size), done once per task and size by
``prepare.prepare_scans`` into ``CACHE/<task>-<size>px-<key>/`` (ArrayRecord shards + manifest: files, frames,
skipped and unread files; resumable). ``key`` hashes the task's files, labels, splits, the size and the
preprocessing, so any change prepares anew and an unchanged task is read back without decoding.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from usjepa_jax.data import prepare as prepare_lib
from usjepa_jax.data import preprocess as pp
from usjepa_jax.data import decoders, scanning, shards
from usjepa_jax.evaluation.config import default_eval_config, validate_labelled_config
from usjepa_jax.evaluation.data import EvalData, Split

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test", "testing": "test"}
LIST_EXTS = (".csv", ".json")


def default_labelled_config() -> ml_collections.ConfigDict:
    """``config.evals.labelled`` (evaluation/config.py): how real labelled tasks are split and read."""
    return default_eval_config().labelled


class TaskError(ValueError):
    """A task that cannot be built as asked; the message names the file, the label or the split."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str
    path: str  # absolute
    layout: str

    @classmethod
    def parse(cls, spec: str) -> TaskSpec:
        """``PATH`` or ``NAME=PATH``; the layout from what is at PATH."""
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "", spec
        p = Path(path).expanduser().resolve()
        if not p.exists():
            raise TaskError(f"task {spec!r}: {p} does not exist")
        if p.is_file():
            if not p.name.lower().endswith(LIST_EXTS):
                raise TaskError(f"task {spec!r}: a list file must be {' or '.join(LIST_EXTS)}, got {p.name}")
            layout = "list"
        else:
            layout = "ultrabench" if scanning.is_ultrabench(p) else "folders"
        return cls(name or (p.stem if p.is_file() else p.name), str(p), layout)


@dataclasses.dataclass(frozen=True)
class SplitRule:
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict) -> SplitRule:
        return cls(float(cfg.val_fraction), float(cfg.test_fraction), int(cfg.split_seed))


@dataclasses.dataclass
class _Record:
    path: str  # absolute
    relpath: str  # the file's name in the task (provenance, messages)
    label: Any  # raw, as written
    split: str | None  # train | val | test, or None (carved)
    group: str
    where: str  # where the record was written (file and line, or the class folder)
    mask_path: str | None = None
    segmentation_path: str | None = None  # a segmentation task's mask (module docstring)


# ------------------------------------------------------------------------------------------------ layouts
def _split_name(value: Any, where: str) -> str | None:
    if value is None or str(value).strip() == "":
        return None
    name = SPLIT_NAMES.get(str(value).strip().lower())
    if name is None:
        raise TaskError(f"{where}: split {value!r} is not one of {sorted(SPLIT_NAMES)}")
    return name


def _segmentation_path(root: Path, r: dict, rel: str, name: str, where: str) -> str:
    """The segmentation mask of one UltraBench record (module docstring), or TaskError naming the record."""
    keys = ("mask",) if name == "mask" else (f"{name}_mask",)
    listed = next((r["masks"][k] for k in keys if k in r.get("masks", {})), None)
    path = str(root / listed) if listed else scanning.find_mask(root / "masks" / name, rel)
    if not path or not Path(path).is_file():
        raise TaskError(f"{where}: no {name!r} segmentation mask for {rel} (looked for the JSON key "
                        f"{keys[0]!r} and in {root / 'masks' / name})")
    return path


def _ultrabench_records(spec: TaskSpec, mask: str = "") -> list[_Record]:
    root = Path(spec.path)
    out = []
    for fname, default in (("train_val.json", None), ("test.json", "test")):
        path = root / fname
        if not path.exists():
            continue
        for k, r in enumerate(scanning.json_records(json.loads(path.read_text()), str(path))):
            where = f"{path} item {k}"
            split = "test" if default == "test" else _split_name(r["split"], where)
            if default is None and split == "test":
                raise TaskError(f"{where}: {r['path']} is marked test inside train_val.json")
            rel = r["path"]
            image = root / "images" / rel
            if not image.exists() and (root / rel).is_file():  # written relative to the dataset folder
                image, rel = root / rel, str(Path(rel).relative_to("images")) if rel.startswith("images/") else rel
            label = "all" if mask and r["label"] is None else r["label"]
            scan = r.get("masks", {}).get("scan_mask")
            out.append(_Record(str(image), rel, label, split, str(r["group"] or rel), where,
                               str(root / scan) if scan else scanning.find_mask(root / "masks" / "scan", rel),
                               _segmentation_path(root, r, rel, mask, where) if mask else None))
    return out


def _folder_records(spec: TaskSpec) -> tuple[list[_Record], dict[str, int]]:
    root = Path(spec.path)
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise TaskError(f"task {spec.name}: {root} has no class folders (expected ROOT/<class>/... or "
                        "ROOT/<split>/<class>/...)")
    by_split = all(p.name.lower() in SPLIT_NAMES for p in subdirs)
    files, unread = scanning.list_files(root)
    out = []
    for path, rel, _ in files:
        parts = Path(rel).parts
        depth = 2 if by_split else 1
        if len(parts) <= depth:
            raise TaskError(f"task {spec.name}: {root / rel} is not inside a class folder (expected "
                            f"{'ROOT/<split>/<class>/' if by_split else 'ROOT/<class>/'}...)")
        split = SPLIT_NAMES[parts[0].lower()] if by_split else None
        label = parts[depth - 1]
        out.append(_Record(path, rel, label, split, rel, str(root.joinpath(*parts[:depth]))))
    return out, unread


def _list_records(spec: TaskSpec) -> list[_Record]:
    path = Path(spec.path)
    base = path.parent
    if path.suffix.lower() == ".json":
        rows = [(f"{path} item {k}", r) for k, r in
                enumerate(scanning.json_records(json.loads(path.read_text()), str(path)))]
    else:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields = {(h or "").strip().lower(): h for h in reader.fieldnames or []}

            def column(keys: Sequence[str], required: bool) -> str | None:
                found = next((fields[k] for k in keys if k in fields), None)
                if found is None and required:
                    raise TaskError(f"{path}: no {keys[0]!r} column (header {reader.fieldnames}; accepted names: "
                                    f"{list(keys)})")
                return found

            cols = {"path": column(scanning.PATH_KEYS, True), "label": column(scanning.LABEL_KEYS, True),
                    "split": column(scanning.SPLIT_KEYS, False), "group": column(scanning.GROUP_KEYS, False)}
            rows = [(f"{path} line {k + 2}", {key: (row.get(c) if c else None) for key, c in cols.items()})
                    for k, row in enumerate(reader)]
    out = []
    for where, r in rows:
        if not r["path"]:
            raise TaskError(f"{where}: empty path")
        p = Path(str(r["path"]).strip())
        full = p if p.is_absolute() else base / p
        label = r["label"].strip() if isinstance(r["label"], str) else r["label"]
        group = str(r["group"]).strip() if r["group"] not in (None, "") else str(p)
        out.append(_Record(str(full.resolve()), str(p), label, _split_name(r["split"], where), group, where))
    return out


# ------------------------------------------------------------------------------------------------ labels, splits
def parse_labels(records: Sequence[_Record]) -> tuple[list[int], tuple[str, ...]]:
    """Raw labels -> (class index per record, class names); see the module docstring."""
    kinds, parsed = {}, []
    for r in records:
        value = r.label
        if isinstance(value, bool) or value is None or (isinstance(value, str) and not value):
            raise TaskError(f"{r.where}: {r.relpath} has no usable label ({value!r})")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str) and value.lstrip("-").isdigit():
            value = int(value)
        if not isinstance(value, int | str):
            raise TaskError(f"{r.where}: label {r.label!r} of {r.relpath} does not parse (expected an integer or "
                            "a class name)")
        kinds.setdefault(type(value), r)
        parsed.append(value)
    if len(kinds) > 1:
        a, b = kinds[int], kinds[str]
        raise TaskError(f"labels mix integers ({a.where}: {a.label!r}) and class names ({b.where}: {b.label!r})")
    classes = sorted(set(parsed))
    index = {c: i for i, c in enumerate(classes)}
    return [index[v] for v in parsed], tuple(str(c) for c in classes)


def _carve(groups_of_class: dict[int, list[str]], fraction: float, seed: int, salt: int) -> set[str]:
    chosen: set[str] = set()
    for c in sorted(groups_of_class):
        groups = sorted(groups_of_class[c])
        n = len(groups)
        k = min(max(round(fraction * n), 1), n - 1) if n >= 2 else 0
        order = np.random.default_rng([seed, salt, c]).permutation(n)
        chosen.update(groups[i] for i in order[:k])
    return chosen


def assign_splits(records: Sequence[_Record], labels: Sequence[int], rule: SplitRule) -> list[str]:
    """The split of every record: its own, else carved by group (module docstring)."""
    group_split: dict[str, str | None] = {}
    group_labels: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r, y in zip(records, labels, strict=True):
        if r.group in group_split and group_split[r.group] != r.split:
            raise TaskError(f"{r.where}: group {r.group!r} is in split {group_split[r.group]!r} and {r.split!r} "
                            "(a recording or patient must stay in one split)")
        group_split[r.group] = r.split
        group_labels[r.group][y] += 1
    group_class = {g: min(c, key=lambda y: (-c[y], y)) for g, c in group_labels.items()}

    def pool(split: str | None) -> dict[int, list[str]]:
        out: dict[int, list[str]] = collections.defaultdict(list)
        for g, s in group_split.items():
            if s == split:
                out[group_class[g]].append(g)
        return out

    have = {s for s in group_split.values() if s}
    if "test" not in have:
        for g in _carve(pool(None), rule.test_fraction, rule.seed, 0):
            group_split[g] = "test"
    if "val" not in have:
        free = pool(None)
        for c, gs in pool("train").items():
            free[c].extend(gs)
        for g in _carve(free, rule.val_fraction, rule.seed, 1):
            group_split[g] = "val"
    return [group_split[r.group] or "train" for r in records]


def check_splits(records: Sequence[_Record], labels: Sequence[int], splits: Sequence[str],
                 class_names: Sequence[str], where: str) -> None:
    counts = {s: collections.Counter() for s in SPLITS}
    for y, s in zip(labels, splits, strict=True):
        counts[s][y] += 1
    for s in SPLITS:
        for c, name in enumerate(class_names):
            if not counts[s][c]:
                example = next(r for r, y in zip(records, labels, strict=True) if y == c)
                total = {t: counts[t][c] for t in SPLITS}
                raise TaskError(f"{where}: class {name!r} has no example in split {s!r} ({total} files; e.g. "
                                f"{example.relpath}, {example.where}). Add examples of it, or change "
                                "config.evals.labelled.val_fraction / test_fraction.")


# ------------------------------------------------------------------------------------------------ the task
@dataclasses.dataclass
class TaskScan:
    spec: TaskSpec
    scan: scanning.DatasetScan  # entries carry label, split and group
    class_names: tuple[str, ...]
    segmentation: dict[str, str] | None = None  # entry path -> its segmentation mask (a segmentation task)
    mask: str = ""


def scan_task(spec: TaskSpec, rule: SplitRule = SplitRule(),
              options: decoders.FrameOptions = decoders.DEFAULT_FRAME_OPTIONS,
              on_error: str = "skip", mask: str = "") -> TaskScan:
    """The task's files with labels and splits, frames counted (headers only). Unreadable files are skipped
    (reported in the scan) or raise; a task without readable frames, a bad label or an empty class fails.
    ``mask``: read the segmentation masks of that name too (UltraBench layout; module docstring)."""
    unread: dict[str, int] = {}
    if mask and spec.layout != "ultrabench":
        raise TaskError(f"task {spec.name}: segmentation masks (mask={mask!r}) are read from the UltraBench "
                        f"layout only; {spec.path} is a {spec.layout} task")
    if spec.layout == "ultrabench":
        records = _ultrabench_records(spec, mask)
    elif spec.layout == "folders":
        records, unread = _folder_records(spec)
    else:
        records = _list_records(spec)
    seen: dict[str, _Record] = {}
    for r in records:
        if r.path in seen:
            raise TaskError(f"{r.where}: {r.relpath} is listed twice (also {seen[r.path].where})")
        seen[r.path] = r
    entries, skipped, kept = [], [], []
    for r in records:
        kind = decoders.file_kind(r.path)
        try:
            if kind is None:
                raise decoders.BadFileError(f"not a readable frame file ({decoders.readable_formats()})")
            if not Path(r.path).is_file():
                raise FileNotFoundError(f"{r.path} does not exist ({r.where})")
            entries.append((r, kind, decoders.checked_frames(r.path, kind, options)))
            kept.append(r)
        except Exception as exc:  # noqa: BLE001 - any decoder error is a bad file
            scanning.skip_or_raise(on_error, skipped, r.relpath, exc, spec.name)
    scan = scanning.DatasetScan(spec.name, spec.path, [], skipped, unread=unread)
    scanning.log_unread(scan)
    if not kept:
        scanning.require_frames([scan], spec.path)
    labels, class_names = parse_labels(kept)
    splits = assign_splits(kept, labels, rule)
    check_splits(kept, labels, splits, class_names, f"task {spec.name} ({spec.path})")
    scan.entries = [scanning.FileEntry(r.path, r.relpath, kind, n, y, r.mask_path, s, r.group)
                    for (r, kind, n), y, s in zip(entries, labels, splits, strict=True)]
    scan.label_names = list(class_names)
    segmentation = {r.path: r.segmentation_path for r in kept} if mask else None
    return TaskScan(spec, scan, class_names, segmentation, mask)


def preprocess_config(data_config: ml_collections.ConfigDict | None) -> pp.PreprocessConfig:
    """The pretraining preprocessing (``config.data.preprocess``; the size is set per encoder)."""
    d = dict((data_config.get("preprocess", None) if data_config is not None else None) or {})
    d.pop("size", None)
    return pp.PreprocessConfig.from_dict(d)


def _cache_key(task: TaskScan, size: int, prep: pp.PreprocessConfig, options: decoders.FrameOptions) -> str:
    listing = [(e.relpath, e.label, e.split, e.group, e.frames) for e in task.scan.entries]
    blob = json.dumps({"path": task.spec.path, "layout": task.spec.layout, "size": size,
                       "preprocess": dataclasses.asdict(prep), "frames": options.to_dict(), "files": listing,
                       "classes": task.class_names}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def prepare_task(task: TaskScan, cache_dir: str | Path, size: int, prep: pp.PreprocessConfig,
                 options: decoders.FrameOptions = decoders.DEFAULT_FRAME_OPTIONS, on_error: str = "skip",
                 workers: int = 0, progress: bool = True) -> Path:
    """Preprocess the task's frames once for ``size`` (resumable); returns the prepared directory."""
    out = Path(cache_dir) / f"{task.spec.name}-{size}px-{_cache_key(task, size, prep, options)}"
    manifest = out / shards.MANIFEST
    if manifest.exists() and json.loads(manifest.read_text()).get("complete"):
        return out
    m = prepare_lib.prepare_scans({task.spec.name: task.scan}, out, workers=workers, size=size, on_error=on_error,
                                  preprocess=prep, frame_options=options, include_test=True, progress=progress,
                                  extra_settings={"task": dataclasses.asdict(task.spec)})
    d = m["datasets"][task.spec.name]
    if d["skipped"]:
        log.warning("task %s: %d files skipped: %s", task.spec.name, len(d["skipped"]),
                    "; ".join(f"{s['file']}: {s['reason']}" for s in d["skipped"][:5]))
    m["complete"] = True
    manifest.write_text(json.dumps(m, indent=1))
    return out


def read_prepared_task(directory: str | Path, class_names: Sequence[str]) -> EvalData:
    """The prepared task's frames as ``EvalData`` (image ``[N, S, S, 1]``, scan mask, label) per split."""
    store = shards.PreparedStore([directory])
    out = {}
    for split in SPLITS:
        files = [f for f in store.files if f["split"] == split]
        if not files:
            raise TaskError(f"{directory}: no readable file in split {split!r} (see skipped in its manifest)")
        images, masks, labels = [], [], []
        for f in files:
            reader = shards.shard_reader(store.shard_paths[f["shard_id"]])
            for data in reader.read(list(range(f["offset"], f["offset"] + f["frames"]))):
                r = shards.decode_record(data)
                images.append(r["image"])
                masks.append(r["scan_mask"])
                labels.append(f["label"])
        out[split] = Split(np.stack(images)[..., None], np.stack(masks), np.asarray(labels, np.int32))
    return EvalData(out["train"], out["val"], out["test"], num_classes=len(class_names),
                    class_names=tuple(class_names))


def read_segmentation(task: TaskScan, directory: str | Path, prep: pp.PreprocessConfig,
                      options: decoders.FrameOptions = decoders.DEFAULT_FRAME_OPTIONS) -> dict[str, np.ndarray]:
    """The segmentation of every prepared frame, per split, in ``read_prepared_task``'s order: uint8 class indices
    ``[N, S, S]``, computed once (each frame decoded again for its scan region) and kept in ``directory``."""
    cache = Path(directory) / f"segmentation-{task.mask}.npz"
    if cache.exists():
        with np.load(cache) as z:
            return {split: z[split] for split in SPLITS}
    entries = {e.relpath: e for e in task.scan.entries}
    files = shards.PreparedStore([directory]).files
    maps = {split: [] for split in SPLITS}
    for split in SPLITS:
        for f in (f for f in files if f["split"] == split):
            e = entries[f["file"]]
            seg_path = task.segmentation[e.path]
            labels = np.asarray(pp.Image.open(seg_path))
            labels = labels[..., 0] if labels.ndim == 3 else labels
            scan, region = decoders.read_mask(e.mask_path), decoders.file_region(e.path, e.kind)
            frames = list(decoders.iter_frames(e.path, e.kind, options))
            if len(frames) != f["frames"]:
                raise TaskError(f"{e.path}: {len(frames)} frames decoded, {f['frames']} prepared")
            maps[split] += [pp.preprocess_with_labels(fr, labels, prep, scan, region)[2] for fr in frames]
    values = np.unique(np.concatenate([np.unique(m) for ms in maps.values() for m in ms]))
    lookup = np.zeros(256, np.uint8)
    lookup[values] = np.arange(len(values))  # mask values -> classes 0..K-1 in sorted order
    out = {split: lookup[np.stack(ms)] for split, ms in maps.items()}
    np.savez(cache, **out)
    return out


def load_task(spec: str | TaskSpec, size: int, cache_dir: str | Path, *,
              labelled: ml_collections.ConfigDict | None = None, data_config: ml_collections.ConfigDict | None = None,
              logger: Callable[[str], None] | None = None, progress: bool = True) -> EvalData:
    """A real labelled task, preprocessed for input ``size`` (cached under ``cache_dir``), as ``EvalData``."""
    labelled = labelled if labelled is not None else default_labelled_config()
    validate_labelled_config(labelled)
    spec = spec if isinstance(spec, TaskSpec) else TaskSpec.parse(spec)
    options = decoders.FrameOptions.from_config(labelled)
    task = scan_task(spec, SplitRule.from_config(labelled), options, labelled.on_error, labelled.get("mask", ""))
    prep = preprocess_config(data_config)
    directory = prepare_task(task, cache_dir, size, prep, options, labelled.on_error, labelled.workers, progress)
    data = read_prepared_task(directory, task.class_names)
    # every file left out, at scan or preprocessing time (the manifest keeps both): the results files list them
    data.skipped = json.loads((directory / shards.MANIFEST).read_text())["datasets"][spec.name]["skipped"]
    if task.mask:
        maps = read_segmentation(task, directory, dataclasses.replace(prep, size=size), options)
        for split in SPLITS:
            getattr(data, split).segmentation = maps[split]
    if logger:
        logger(f"task {spec.name} ({spec.layout}, {spec.path}): {len(task.class_names)} classes "
               f"{list(task.class_names)[:8]}, frames train/val/test {len(data.train)}/{len(data.val)}/"
               f"{len(data.test)}, prepared at {size} px in {directory}"
               + (f"; unread {scanning.describe_extensions(task.scan.unread)}" if task.scan.unread else "")
               + (f"; {len(data.skipped)} files skipped" if data.skipped else ""))
    return data
