"""Prepared shards: the record codec, the shard writer with its progress log, the manifest, and reading them back.

A prepared directory holds ``shard-NNNNN.array_record`` files (one record per frame: header + uint8 image +
bit-packed scan mask, ``encode_record``), ``progress.jsonl`` (one line per closed shard, listing its files: the
durable record a resumed run trusts) and ``manifest.json`` (per dataset its files, frames, skipped and unread files;
the shards; one row per file: dataset, relative path, shard, first record, frames, label, split). Written by
``prepare.py`` (real data) and the simulator's pre-render; read by ``PreparedStore`` and ``PreparedSource``.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from usjepa_jax.data.decoders import BadFileError, FrameIndex

RECORD_MAGIC = b"USJ1"
_HEADER = struct.Struct("<4sHHiiI")  # magic, height, width, label, frame, crc32 of "<dataset>/<file>"
SHARD_SUFFIX = ".array_record"
PROGRESS = "progress.jsonl"
MANIFEST = "manifest.json"
VERSION = 1
WRITER_OPTIONS = "group_size:1"  # random access: one record per chunk


# ------------------------------------------------------------------------------------------------ records
def encode_record(image: np.ndarray, mask: np.ndarray, label: int, frame: int, file_id: int) -> bytes:
    h, w = image.shape
    return (_HEADER.pack(RECORD_MAGIC, h, w, int(label), int(frame), int(file_id))
            + np.ascontiguousarray(image, np.uint8).tobytes() + np.packbits(mask.astype(bool)).tobytes())


def decode_record(data: bytes) -> dict[str, Any]:
    magic, h, w, label, frame, file_id = _HEADER.unpack_from(data)
    if magic != RECORD_MAGIC:
        raise BadFileError(f"not a prepared record (magic {magic!r})")
    o = _HEADER.size
    image = np.frombuffer(data, np.uint8, h * w, o).reshape(h, w)
    mask = np.unpackbits(np.frombuffer(data, np.uint8, offset=o + h * w), count=h * w).reshape(h, w).astype(bool)
    return {"image": image, "scan_mask": mask, "label": np.int32(label), "frame": frame, "file_id": file_id}


# ------------------------------------------------------------------------------------------------ writing
class ShardWriter:
    """The open shard; on close its files are appended to progress.jsonl (the completion records)."""

    def __init__(self, output: Path, number: int, options: str, progress_file):
        from array_record.python import array_record_module
        self.name = f"shard-{number:05d}{SHARD_SUFFIX}"
        self.writer = array_record_module.ArrayRecordWriter(str(output / self.name), options)
        self.records, self.files, self.progress_file = 0, [], progress_file

    def add_file(self, row: dict[str, Any], frames: list, file_id: int) -> None:
        row = dict(row, shard=self.name, offset=self.records, frames=len(frames))
        for k, (image, mask) in enumerate(frames):
            self.writer.write(encode_record(image, mask, row["label"], k, file_id))
        self.records += len(frames)
        self.files.append(row)

    def close(self) -> None:
        self.writer.close()
        append_line(self.progress_file, {"type": "shard", "name": self.name, "records": self.records,
                                         "files": self.files})


def append_line(f, record: dict) -> None:
    """One JSON line, flushed and synced (the progress log survives a kill)."""
    f.write(json.dumps(record) + "\n")
    f.flush()
    os.fsync(f.fileno())


def read_progress(output: Path) -> list[dict]:
    """The complete lines of ``progress.jsonl`` (a line cut by a kill ends it)."""
    path = output / PROGRESS
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: its shard is not complete
            break
    return out


def write_manifest(out: Path, scans: dict, settings: dict) -> dict[str, Any]:
    """``manifest.json`` from progress.jsonl (the durable record) and the scans (scan-time skipped files)."""
    records = read_progress(out)
    shards = [r for r in records if r.get("type") == "shard"]
    files = sorted(({**f} for s in shards for f in s["files"]), key=lambda f: (f["dataset"], f["file"]))
    datasets: dict[str, dict[str, Any]] = {}
    for name, scan in scans.items():
        datasets[name] = {"root": scan.root, "files": 0, "frames": 0, "skipped": list(scan.skipped),
                          "label_names": scan.label_names, "unread": dict(sorted(scan.unread.items()))}

    def entry(name: str) -> dict[str, Any]:
        return datasets.setdefault(name, {"root": None, "files": 0, "frames": 0, "skipped": [], "label_names": None,
                                          "unread": {}})

    for f in files:
        d = entry(f["dataset"])
        d["files"] += 1
        d["frames"] += f["frames"]
    for r in records:
        if r.get("type") == "skipped":
            d = entry(r["dataset"])
            d["skipped"].append({"file": r["file"], "reason": r["reason"]})
    manifest = {"version": VERSION, "settings": settings, "datasets": datasets,
                "shards": [{"name": s["name"], "records": s["records"]} for s in shards], "files": files,
                "total": {"files": len(files), "frames": sum(f["frames"] for f in files)}}
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(out / MANIFEST)
    return manifest


# ------------------------------------------------------------------------------------------------ reading
_READERS: dict[str, Any] = {}


def shard_reader(path: str):
    """The ArrayRecord reader of shard ``path``, opened once per process."""
    r = _READERS.get(path)
    if r is None:
        from array_record.python import array_record_module
        r = _READERS[path] = array_record_module.ArrayRecordReader(path)
    return r


class PreparedStore:
    """The prepared directories' manifests: files (dataset, relpath, shard, offset, frames, label, split)."""

    def __init__(self, dirs: Sequence[str | os.PathLike]):
        self.dirs = [str(Path(d).resolve()) for d in dirs]
        self.files: list[dict[str, Any]] = []
        self.shard_paths: list[str] = []
        self.manifests = []
        for d in self.dirs:
            path = Path(d) / "manifest.json"
            if not path.exists():
                raise FileNotFoundError(f"{path} missing: run `python -m usjepa_jax.data.prepare --output {d}` "
                                        "to completion first")
            manifest = json.loads(path.read_text())
            self.manifests.append(manifest)
            shard_index = {}
            for shard in manifest["shards"]:
                shard_index[shard["name"]] = len(self.shard_paths)
                self.shard_paths.append(str(Path(d) / shard["name"]))
            for f in manifest["files"]:
                self.files.append(dict(f, shard_id=shard_index[f["shard"]]))

    @property
    def datasets(self) -> list[str]:
        return sorted({f["dataset"] for f in self.files})


class PreparedSource:
    """Frames of some prepared files (records addressed as (shard, offset)); readers open lazily per process."""

    def __init__(self, name: str, shard_paths: Sequence[str], files: Sequence[dict[str, Any]]):
        self.name, self.shard_paths = name, list(shard_paths)
        self.files = [{k: f[k] for k in ("dataset", "file", "shard_id", "offset", "frames")} for f in files]
        self.frames = FrameIndex(self.files, [f["frames"] for f in self.files])

    def __len__(self) -> int:
        return len(self.frames)

    def provenance(self, index: int) -> dict[str, Any]:
        f, frame = self.frames.locate(index)
        return {"dataset": f["dataset"], "file": f["file"], "frame": frame}

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} frames")
        f, frame = self.frames.locate(index)
        data = shard_reader(self.shard_paths[f["shard_id"]]).read([f["offset"] + frame])[0]
        r = decode_record(data)
        return {"image": r["image"], "scan_mask": r["scan_mask"], "label": r["label"], "index": np.int32(index)}

    def __repr__(self) -> str:
        return f"PreparedSource({self.name!r}, files={len(self.files)}, frames={len(self)})"
