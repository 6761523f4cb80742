"""Real ultrasound as grain random-access sources: raw frame files decoded on access (``FilesSource``) or
prepared shards (``shards.PreparedSource``), per dataset, and the split's mixture of them (``make_real_source``).

Every source is picklable (file handles are opened lazily per process and never pickled) and its elements are what
the pipeline expects::

    image uint8 [H, W], scan_mask bool [H, W], label int32 (-1 when unknown), index int32

Provenance (dataset name, file, frame index) stays out of the element (batches hold numeric arrays only); ask the
source: ``source.provenance(i) -> {"dataset", "file", "frame"}``. A file that fails while decoding a frame is logged
once and the element is replaced by the next index that decodes (``on_error='skip'``; deterministic), or raises
(``'raise'``).

Splits: ``train``/``val`` come from a deterministic hold-out *by file* (``is_held_out``): a file is held out when
the hash of ``"<dataset>/<relative path>"`` falls below ``val_fraction``, so all frames of one cine loop fall on
the same side, and the split of a file never changes when other files are added.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from usjepa_jax.data import preprocess as pp
from usjepa_jax.data.decoders import (DEFAULT_FRAME_OPTIONS, BadFileError, FrameIndex, FrameOptions, file_region,
                                      read_frame, read_mask)
from usjepa_jax.data.mixture import ConcatSource, MixtureSource, SubsetSource
from usjepa_jax.data.scanning import (FileEntry, check_on_error, is_ultrabench, require_frames, scan_input,
                                      scan_ultrabench)
from usjepa_jax.data.shards import PreparedSource, PreparedStore

log = logging.getLogger(__name__)

def is_held_out(dataset: str, relpath: str, val_fraction: float) -> bool:
    """Deterministic hold-out by file: sha256 of ``"<dataset>/<relpath>"`` mapped to [0, 1) < ``val_fraction``."""
    digest = hashlib.sha256(f"{dataset}/{relpath}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < val_fraction


# ------------------------------------------------------------------------------------------------ raw files
class FilesSource:
    """The frames of some files of one dataset, decoded and preprocessed on access."""

    def __init__(self, name: str, entries: Sequence[FileEntry], preprocess: pp.PreprocessConfig,
                 on_error: str = "skip", options: FrameOptions = DEFAULT_FRAME_OPTIONS):
        check_on_error(on_error)
        self.name, self.entries = name, list(entries)
        self.preprocess, self.on_error, self.options = preprocess, on_error, options
        self.frames = FrameIndex(self.entries, [e.frames for e in self.entries])
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.frames)

    def locate(self, index: int) -> tuple[FileEntry, int]:
        return self.frames.locate(index)

    def provenance(self, index: int) -> dict[str, Any]:
        entry, frame = self.locate(index)
        return {"dataset": self.name, "file": entry.relpath, "frame": frame}

    def _load(self, index: int) -> dict[str, Any]:
        entry, frame = self.locate(index)
        raw = read_frame(entry.path, entry.kind, frame, self.options)
        image, mask = pp.preprocess_frame(raw, self.preprocess, read_mask(entry.mask_path),
                                          region=file_region(entry.path, entry.kind))
        return {"image": image, "scan_mask": mask, "label": np.int32(entry.label), "index": np.int32(index)}

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        index = int(index)
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} frames")
        for k in range(n):
            i = (index + k) % n
            f = self.frames.file_of(i)
            if f in self._bad:
                continue
            try:
                element = self._load(i)
                return dict(element, index=np.int32(index))
            except Exception as exc:
                entry, frame = self.locate(i)
                if self.on_error == "raise":
                    raise BadFileError(f"{self.name}/{entry.relpath} frame {frame}: {type(exc).__name__}: {exc}"
                                       ) from exc
                log.warning("skipping %s/%s (frame %d failed): %s: %s", self.name, entry.relpath, frame,
                            type(exc).__name__, exc)
                self._bad.add(f)
        raise BadFileError(f"{self.name}: no frame decodes")

    def __getstate__(self):
        return dict(self.__dict__, _bad=set())

    def __repr__(self) -> str:
        return f"FilesSource({self.name!r}, files={len(self.entries)}, frames={len(self)})"


# ------------------------------------------------------------------------------------------------ by config
def _split_files(items: Sequence, dataset_of, relpath_of, split_of, split: str, val_fraction: float) -> list:
    out = []
    for item in items:
        s = split_of(item)
        if split == "test":
            keep = s == "test"
        else:
            keep = s != "test" and (is_held_out(dataset_of(item), relpath_of(item), val_fraction) == (split == "val"))
        if keep:
            out.append(item)
    return out


def dataset_sources(data_config, split: str) -> list:
    """One random-access source per dataset for ``split`` (``data.source`` = files | ultrabench | prepared)."""
    cfg = data_config
    paths = list(cfg.get("paths", None) or [])
    if not paths:
        raise ValueError(f"config.data.source={cfg.source!r} needs config.data.paths (a list of directories).")
    wanted = set(cfg.get("datasets", None) or [])
    on_error = cfg.get("on_error", "skip")
    val_fraction = float(cfg.get("val_fraction", 0.05))
    sources = []
    if cfg.source == "prepared":
        store = PreparedStore(paths)
        for name in store.datasets:
            if wanted and name not in wanted:
                continue
            files = _split_files([f for f in store.files if f["dataset"] == name], lambda f: f["dataset"],
                                 lambda f: f["file"], lambda f: f.get("split", "train_val"), split, val_fraction)
            if files:
                sources.append(PreparedSource(name, store.shard_paths, files))
        return sources
    prep = dict(cfg.get("preprocess", None) or {})
    if not prep.get("size"):
        prep["size"] = int(cfg.image_size)
    prep = pp.PreprocessConfig.from_dict(prep)
    options = FrameOptions.from_config(cfg)
    for path in paths:
        if cfg.source == "ultrabench":
            p = Path(path)
            scans = ([scan_ultrabench(p, on_error, options)] if is_ultrabench(p)
                     else [scan_ultrabench(q, on_error, options) for q in sorted(p.iterdir()) if is_ultrabench(q)])
            require_frames(scans, p)
        elif cfg.source == "files":
            scans = scan_input(path, on_error, options)
        else:
            raise ValueError(f"config.data.source={cfg.source!r}: not a real-data source.")
        for scan in scans:
            if wanted and scan.name not in wanted:
                continue
            entries = _split_files(scan.entries, lambda e, n=scan.name: n, lambda e: e.relpath, lambda e: e.split,
                                   split, val_fraction)
            if entries:
                sources.append(FilesSource(scan.name, entries, prep, on_error, options))
    return sources


class EmptySplitError(ValueError):
    """A split without frames (e.g. a folder too small for any file to be held out for validation)."""


def make_real_source(data_config, split: str, seed: int):
    """The split's source: train = capped mixture of the datasets; val/test = all of their frames (val at most
    ``num_val``, an evenly spaced deterministic subset)."""
    sources = dataset_sources(data_config, split)
    if not sources:
        raise EmptySplitError(f"config.data.paths={list(data_config.paths)}: no frames in split {split!r} "
                         f"(source={data_config.source!r}, datasets={list(data_config.get('datasets', []) or [])}).")
    if split == "train":
        return MixtureSource(sources, cap=data_config.get("cap_per_dataset", 50_000),
                             epochs=int(data_config.get("mixture_epochs", 1)), seed=seed)
    concat = ConcatSource(sources)
    limit = int(data_config.num_val) if split == "val" else len(concat)
    return SubsetSource(concat, limit) if len(concat) > limit else concat
