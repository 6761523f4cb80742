"""Scanning inputs into datasets: a folder (or file) of frame files, an UltraBench dataset folder, or a folder of
them -> ``DatasetScan`` (one per dataset: its files with their frame counts, labels, masks and splits).

UltraBench (``<dataset>_v<version>/images``, ``masks/scan``, ``train_val.json``, ``test.json``) is read as is.
JSON schema accepted (a guess at the layout, documented here): a list whose items are either image paths relative
to ``images/`` (label unknown) or records ``{"image": path, "label": int or str, ...}`` (the keys
``file``/``filename``/``path``/``image_path`` are accepted for the path, ``class``/``y``/``target`` for the
label); or a dict with such a list under ``"images"``/``"items"``/``"data"``; or a dict of such lists keyed by
sub-split (``{"train": [...], "val": [...]}``), whose union is taken. String labels are numbered in sorted order
over both files of a dataset. The scan mask of ``images/a/b.png`` is ``masks/scan/a/b.png`` (or any file of the
same stem there); without one, the scan region is detected. ``test.json`` is the ``test`` split and never enters
``train``/``val``.

Nothing is ignored silently: files of other extensions are counted by extension (``DatasetScan.unread``; the
prepare manifest and the log list them), and an input in which no frame can be read at all fails
(``NoFramesError``) naming the folder and the extensions it holds. A file whose header cannot be read is logged
with its path and reason and skipped (``on_error='skip'``) or raises (``'raise'``): ``skip_or_raise``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from usjepa_jax.data import containers
from usjepa_jax.data.decoders import (DEFAULT_FRAME_OPTIONS, BadFileError, FrameOptions, checked_frames, count_frames,
                                      extension, file_kind, readable_formats, require_decoders)

log = logging.getLogger(__name__)

ON_ERROR = ("skip", "raise")


class NoFramesError(ValueError):
    """An input in which no frame could be read at all; the message names it and the extensions it holds."""


# ------------------------------------------------------------------------------------------------ scans
@dataclasses.dataclass(frozen=True)
class FileEntry:
    path: str  # absolute
    relpath: str  # relative to the dataset root (the provenance and hold-out key)
    kind: str
    frames: int
    label: int = -1
    mask_path: str | None = None
    split: str = "train_val"  # 'train_val' (hold-out decides train/val) or 'test'; labelled tasks: train|val|test
    group: str = ""  # labelled tasks: the recording a file belongs to (its frames never straddle splits)


@dataclasses.dataclass
class DatasetScan:
    name: str
    root: str
    entries: list[FileEntry]
    skipped: list[dict[str, str]]  # {"file", "reason"}
    label_names: list[str] | None = None
    unread: dict[str, int] = dataclasses.field(default_factory=dict)  # extension -> files not read (other formats)

    @property
    def frames(self) -> int:
        return sum(e.frames for e in self.entries)


def describe_extensions(counts: dict[str, int]) -> str:
    return ", ".join(f"{ext} x{n}" for ext, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"


def require_frames(scans: Sequence[DatasetScan], where: str | os.PathLike) -> None:
    """Fail (``NoFramesError``) when the scans of input ``where`` hold no readable frame at all."""
    if sum(s.frames for s in scans):
        return
    seen: dict[str, int] = {}
    for s in scans:
        for ext, n in s.unread.items():
            seen[ext] = seen.get(ext, 0) + n
        for k in s.skipped:
            ext = extension(k["file"])
            seen[ext] = seen.get(ext, 0) + 1
    skipped = [k for s in scans for k in s.skipped]
    detail = f"; {len(skipped)} unreadable (e.g. {skipped[0]['file']}: {skipped[0]['reason']})" if skipped else ""
    raise NoFramesError(f"{where}: no readable frame. Extensions seen: {describe_extensions(seen)}{detail}. "
                        f"Readable: {readable_formats()}.")


def log_unread(scan: DatasetScan) -> None:
    if scan.unread:
        log.warning("%s: %d files not read (not a frame format): %s", scan.name, sum(scan.unread.values()),
                    describe_extensions(scan.unread))


def skip_or_raise(on_error: str, skipped: list, relpath: str, exc: BaseException, dataset: str) -> None:
    """Raise (``on_error='raise'``) or log and record the file in ``skipped``."""
    reason = f"{type(exc).__name__}: {exc}"
    if on_error == "raise":
        raise BadFileError(f"{dataset}/{relpath}: {reason}") from exc
    log.warning("skipping %s/%s: %s", dataset, relpath, reason)
    skipped.append({"file": relpath, "reason": reason})


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r}: expected one of {ON_ERROR}.")


# ------------------------------------------------------------------------------------------------ folders
def list_files(root: str | os.PathLike) -> tuple[list[tuple[str, str, str]], dict[str, int]]:
    """(absolute path, relative path, kind) of every frame file under ``root`` (or ``root`` itself), sorted, and
    the count by extension of the other files (hidden files and MetaImage data files are neither)."""
    root = Path(root)
    out, unread = [], {}

    def add(path: str, rel: str) -> None:
        kind = file_kind(path)
        if kind:
            out.append((path, rel, kind))
        elif not containers.is_metaimage_data(path):
            unread[extension(path)] = unread.get(extension(path), 0) + 1

    if root.is_file():
        add(str(root), root.name)
    else:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if not name.startswith("."):
                    path = os.path.join(dirpath, name)
                    add(path, os.path.relpath(path, root))
    require_decoders({kind for _, _, kind in out}, root)
    return out, unread


def scan_files(root: str | os.PathLike, name: str | None = None, on_error: str = "skip",
               options: FrameOptions = DEFAULT_FRAME_OPTIONS) -> DatasetScan:
    """A folder (recursively) or one file of frame files (any readable kind, mixed); dataset name = folder
    name. Files of other extensions are counted in ``unread`` (and logged)."""
    check_on_error(on_error)
    root = Path(root).resolve()
    name = name or (root.name if root.is_dir() else root.parent.name)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist")
    entries, skipped = [], []
    files, unread = list_files(root)
    for path, rel, kind in files:
        try:
            entries.append(FileEntry(path, rel, kind, checked_frames(path, kind, options)))
        except Exception as exc:  # noqa: BLE001 - any decoder error is a bad file
            skip_or_raise(on_error, skipped, rel, exc, name)
    scan = DatasetScan(name, str(root), entries, skipped, unread=unread)
    log_unread(scan)
    return scan


# ------------------------------------------------------------------------------------------------ UltraBench
def is_ultrabench(root: str | os.PathLike) -> bool:
    root = Path(root)
    return root.is_dir() and (root / "images").is_dir() and (
        (root / "train_val.json").exists() or (root / "test.json").exists())


PATH_KEYS = ("image", "file", "filename", "path", "image_path", "img")
LABEL_KEYS = ("label", "class", "y", "target")
SPLIT_KEYS = ("split", "subset", "fold")
GROUP_KEYS = ("group", "patient", "patient_id", "subject", "study", "video")
_LIST_KEYS = ("images", "items", "data", "samples")


def _first(item: dict, keys: Sequence[str], default: Any = None) -> Any:
    return next((item[k] for k in keys if k in item), default)


def json_records(obj: Any, where: str, split: str | None = None) -> list[dict[str, Any]]:
    """``{"path", "label", "split", "group"}`` (None where absent) of each item of the accepted UltraBench JSON
    shapes (module docstring); ``split`` is the record's own split key or the key of its sub-split list; ``masks``
    (only when the record names any): its mask paths by key (``mask``, ``scan_mask``, ``<name>_mask``: UltraBench's
    segmentation tasks)."""
    if isinstance(obj, dict):
        for key in _LIST_KEYS:
            if key in obj and isinstance(obj[key], list):
                return json_records(obj[key], where, split)
        if obj and all(isinstance(v, list) for v in obj.values()):
            return [r for k, v in obj.items() for r in json_records(v, where, str(k))]
        raise ValueError(f"{where}: unrecognised JSON layout (keys {sorted(obj)[:8]})")
    if not isinstance(obj, list):
        raise TypeError(f"{where}: expected a list or a dict, got {type(obj).__name__}")
    out = []
    for item in obj:
        if isinstance(item, str):
            out.append({"path": item, "label": None, "split": split, "group": None})
        elif isinstance(item, dict):
            path = next((item[k] for k in PATH_KEYS if k in item), None)
            if path is None:
                raise ValueError(f"{where}: record without an image path: {item}")
            out.append({"path": str(path), "label": _first(item, LABEL_KEYS), "split": _first(item, SPLIT_KEYS, split),
                        "group": _first(item, GROUP_KEYS)})
            masks = {k: str(v) for k, v in item.items() if isinstance(v, str) and (k == "mask" or k.endswith("_mask"))}
            if masks:
                out[-1]["masks"] = masks
        else:
            raise TypeError(f"{where}: unsupported item {item!r}")
    return out


def find_mask(mask_dir: Path, rel: str) -> str | None:
    """The mask file of image ``rel`` under ``mask_dir``: the same path, or an image of the same stem."""
    direct = mask_dir / rel
    if direct.exists():
        return str(direct)
    parent = (mask_dir / rel).parent
    stem = Path(rel).name.split(".")[0]
    if parent.is_dir():
        for cand in sorted(parent.iterdir()):
            if cand.name.split(".")[0] == stem and file_kind(cand) == "image":
                return str(cand)
    return None


def scan_ultrabench(root: str | os.PathLike, on_error: str = "skip",
                    options: FrameOptions = DEFAULT_FRAME_OPTIONS) -> DatasetScan:
    """One UltraBench dataset folder ``<dataset>_v<version>`` (see the module docstring for the JSON schema)."""
    check_on_error(on_error)
    root = Path(root).resolve()
    name = root.name
    records = []
    for split, fname in (("train_val", "train_val.json"), ("test", "test.json")):
        if (root / fname).exists():
            for r in json_records(json.loads((root / fname).read_text()), f"{root / fname}"):
                records.append((split, r["path"], r["label"]))
    names = sorted({str(lab) for _, _, lab in records if isinstance(lab, str)})
    label_index = {n: i for i, n in enumerate(names)}
    require_decoders({file_kind(root / "images" / rel) for _, rel, _ in records}, root)
    entries, skipped = [], []
    for split, rel, label in records:
        path = root / "images" / rel
        try:
            kind = file_kind(path)
            if kind is None:
                raise BadFileError(f"not a readable frame file ({readable_formats()})")
            n = count_frames(str(path), kind, options)
            lab = -1 if label is None else (label_index[label] if isinstance(label, str) else int(label))
            entries.append(FileEntry(str(path), rel, kind, n, lab, find_mask(root / "masks" / "scan", rel), split))
        except Exception as exc:  # noqa: BLE001
            skip_or_raise(on_error, skipped, rel, exc, name)
    return DatasetScan(name, str(root), entries, skipped, names or None)


# ------------------------------------------------------------------------------------------------ any input
def scan_input(path: str | os.PathLike, on_error: str = "skip",
               options: FrameOptions = DEFAULT_FRAME_OPTIONS) -> list[DatasetScan]:
    """An input path -> datasets: an UltraBench dataset folder, a folder of UltraBench dataset folders, or a
    folder/file of raw frames (one dataset named after the folder). Fails (``NoFramesError``) when the input
    holds no readable frame at all."""
    path = Path(path)
    if is_ultrabench(path):
        scans = [scan_ultrabench(path, on_error, options)]
    elif path.is_dir() and any(is_ultrabench(p) for p in path.iterdir()):
        scans = [scan_ultrabench(p, on_error, options) for p in sorted(path.iterdir()) if is_ultrabench(p)]
    else:
        scans = [scan_files(path, on_error=on_error, options=options)]
    require_frames(scans, path)
    return scans
