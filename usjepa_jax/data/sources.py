"""Real ultrasound sources: image folders, DICOM, NIfTI, cine video, HDF5, MetaImage, the UltraBench layout,
prepared ArrayRecord shards.

Every source here is a grain random-access source (``__len__``, ``__getitem__``, picklable: file handles are
opened lazily per process and never pickled) whose elements are what the pipeline expects::

    image uint8 [H, W], scan_mask bool [H, W], label int32 (-1 when unknown), index int32

Provenance (dataset name, file, frame index) stays out of the element (batches hold numeric arrays only); ask the
source: ``source.provenance(i) -> {"dataset", "file", "frame"}``.

Formats (``file_kind``), all decoded to uint8 by ``preprocess.preprocess_frame``:

* images via Pillow: ``.png .jpg .jpeg .bmp .tif .tiff .gif .webp``; 1/8/16/32-bit, float, grey, grey+alpha, RGB,
  RGBA (alpha dropped), palette (expanded), CMYK/YCbCr (to RGB); multi-page TIFF/GIF pages are frames.
* DICOM via pydicom (``.dcm .dicom .dic``, or any file with the ``DICM`` preamble): every frame of a multi-frame
  (cine) object is an example; YBR_* is converted to RGB by pydicom, PALETTE COLOR through its LUT, MONOCHROME1 is
  inverted. Compressed transfer syntaxes need the decoders in requirements.txt: RLE (pydicom, pylibjpeg-rle),
  JPEG baseline/extended (Pillow or pylibjpeg-libjpeg), JPEG lossless and JPEG-LS (pylibjpeg-libjpeg),
  JPEG 2000 (pylibjpeg-openjpeg). When the file carries ``SequenceOfUltrasoundRegions``, the union of its
  regions' rectangles (``RegionLocationMinX0`` .. ``MaxY1``; the 2-D tissue regions, ``RegionSpatialFormat`` 1,
  when there are any) bounds the scan region (``dicom_region``): detection runs inside it, and without
  detection it is the region.
* NIfTI via nibabel (``.nii .nii.gz``): singleton dimensions are dropped; a 2-D image is one frame; a 3-D array
  (a volume, or 2-D+t) gives one frame per index along ``nifti_axis`` (default -1, the last: slices of a volume,
  time points of a 2-D+t loop); a 4-D array gives those slices for every index of the last (time) dimension.
* cine video (``.avi .mp4 ...``, PyAV), HDF5 (``.h5 .hdf5``, h5py), MetaImage (``.mhd`` + ``.raw/.zraw``,
  ``.mha``): ``formats.py``. ``FrameOptions`` holds the choices these formats need (NIfTI axis, video stride,
  HDF5 dataset key); configs set them as ``data.nifti_axis``, ``data.video_stride``, ``data.h5_key``.
* UltraBench (``<dataset>_v<version>/images``, ``masks/scan``, ``train_val.json``, ``test.json``), read as is.
  JSON schema accepted (a guess at the layout, documented here): a list whose items are either image paths
  relative to ``images/`` (label unknown) or records ``{"image": path, "label": int or str, ...}`` (the keys
  ``file``/``filename``/``path``/``image_path`` are accepted for the path, ``class``/``y``/``target`` for the
  label); or a dict with such a list under ``"images"``/``"items"``/``"data"``; or a dict of such lists keyed by
  sub-split (``{"train": [...], "val": [...]}``), whose union is taken. String labels are numbered in sorted
  order over both files of a dataset. The scan mask of ``images/a/b.png`` is ``masks/scan/a/b.png`` (or any file
  of the same stem there); without one, the scan region is detected. ``test.json`` is the ``test`` split and
  never enters ``train``/``val``.
* prepared ArrayRecord shards (``prepare.py``): see :class:`PreparedStore`.

Nothing is ignored silently: files of other extensions are counted by extension (``DatasetScan.unread``; the
prepare manifest and the log list them), and an input in which no frame can be read at all fails
(``NoFramesError``) naming the folder and the extensions it holds.

Bad input (``on_error``): while scanning, a file whose header cannot be read is logged with its path and reason and
skipped (``'skip'``) or raises (``'raise'``); a file that fails later while decoding a frame is logged once and
the element is replaced by the next index that decodes (``'skip'``; deterministic), or raises (``'raise'``).

Splits: ``train``/``val`` come from a deterministic hold-out *by file* (``is_held_out``): a file is held out when
the hash of ``"<dataset>/<relative path>"`` falls below ``val_fraction``, so all frames of one cine loop fall on
the same side, and the split of a file never changes when other files are added.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import usjepa_jax
from usjepa_jax.data import formats
from usjepa_jax.data import preprocess as pp
from usjepa_jax.data.formats import FrameOptions

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
DICOM_EXTS = (".dcm", ".dicom", ".dic")
NIFTI_EXTS = (".nii", ".nii.gz")
ON_ERROR = ("skip", "raise")
# Extension groups by kind (for messages and the README): what ``file_kind`` recognises.
READABLE = {"image": IMAGE_EXTS, "dicom": DICOM_EXTS + ("(none, with the DICM preamble)",), "nifti": NIFTI_EXTS,
            "video": formats.VIDEO_EXTS, "hdf5": formats.HDF5_EXTS, "metaimage": formats.METAIMAGE_EXTS}
DEFAULT_OPTIONS = FrameOptions()


class BadFileError(RuntimeError):
    """A file that cannot be read; the message names the file and the reason."""


class NoFramesError(ValueError):
    """An input in which no frame could be read at all; the message names it and the extensions it holds."""


def readable_formats() -> str:
    return "; ".join(f"{kind}: {' '.join(exts)}" for kind, exts in READABLE.items())


def extension(path: str | os.PathLike) -> str:
    """The lower-case extension (``.nii.gz`` as one), or ``'(none)'``."""
    name = os.path.basename(str(path)).lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    ext = os.path.splitext(name)[1]
    return ext or "(none)"


# ------------------------------------------------------------------------------------------------ file kinds
def file_kind(path: str | os.PathLike) -> str | None:
    """``'image'``, ``'dicom'``, ``'nifti'``, ``'video'``, ``'hdf5'``, ``'metaimage'`` or None (not a frame
    file: counted as unread by the scans, not an error)."""
    name = str(path).lower()
    if name.endswith(NIFTI_EXTS):
        return "nifti"
    if name.endswith(DICOM_EXTS):
        return "dicom"
    if name.endswith(IMAGE_EXTS):
        return "image"
    if name.endswith(formats.VIDEO_EXTS):
        return "video"
    if name.endswith(formats.HDF5_EXTS):
        return "hdf5"
    if name.endswith(formats.METAIMAGE_EXTS):
        return "metaimage"
    if "." not in os.path.basename(name):  # DICOM files often have no extension: sniff the preamble
        try:
            with open(path, "rb") as f:
                f.seek(128)
                if f.read(4) == b"DICM":
                    return "dicom"
        except OSError:
            return None
    return None


def is_held_out(dataset: str, relpath: str, val_fraction: float) -> bool:
    """Deterministic hold-out by file: sha256 of ``"<dataset>/<relpath>"`` mapped to [0, 1) < ``val_fraction``."""
    digest = hashlib.sha256(f"{dataset}/{relpath}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < val_fraction


# ------------------------------------------------------------------------------------------------ decoders
@functools.lru_cache(maxsize=4)
def _dicom(path: str, mtime: float):
    import pydicom
    return pydicom.dcmread(path)


@functools.lru_cache(maxsize=2)
def _nifti_array(path: str, mtime: float) -> np.ndarray:
    import nibabel as nib
    return np.asanyarray(nib.load(path).dataobj)


def _mtime(path: str) -> float:
    return os.stat(path).st_mtime


def _nifti_layout(shape: tuple[int, ...], axis: int) -> tuple[tuple[int, ...], int, int]:
    """(squeezed shape, slice axis, frames) of a NIfTI array shape."""
    shape = tuple(int(s) for s in shape if s > 1) or (1, 1)
    if len(shape) == 1:
        shape = (shape[0], 1)
    if len(shape) == 2:
        return shape, -1, 1
    if len(shape) > 4:
        raise BadFileError(f"NIfTI arrays of more than 4 non-singleton dimensions are not supported: {shape}")
    spatial = 3
    ax = axis % spatial
    frames = shape[ax] * (shape[3] if len(shape) == 4 else 1)
    return shape, ax, frames


def count_frames(path: str, kind: str, options: FrameOptions = DEFAULT_OPTIONS) -> int:
    """Frames in a file (reads headers only where the format allows)."""
    if kind == "image":
        from PIL import Image
        with Image.open(path) as im:
            n = int(getattr(im, "n_frames", 1))
            if n == 1:
                im.verify()  # checksums / structure, without decoding
        return n
    if kind == "dicom":
        import pydicom
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if "Rows" not in ds or "Columns" not in ds:
            raise BadFileError("DICOM object without an image (no Rows/Columns)")
        return int(ds.get("NumberOfFrames", 1) or 1)
    if kind == "nifti":
        import nibabel as nib
        return _nifti_layout(nib.load(path).shape, options.nifti_axis)[2]
    if kind == "video":
        return formats.video_frames(path, options.video_stride)
    if kind == "hdf5":
        return formats.hdf5_frames(path, options.h5_key)
    if kind == "metaimage":
        return formats.metaimage_frames(path)
    raise BadFileError(f"unknown file kind {kind!r}")


def _pil_frame(im) -> np.ndarray:
    mode = im.mode
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if "transparency" in im.info or mode == "PA" else "RGB")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    elif mode == "LA" or mode == "1":
        im = im.convert("L")
    arr = np.asarray(im)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    return arr


def _dicom_frame(ds, arr: np.ndarray) -> np.ndarray:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut
        arr = apply_color_lut(arr, ds)
    elif photometric == "MONOCHROME1":
        arr = -arr.astype(np.float32)  # inverted grey: min..max scaling then maps it the right way round
    return arr


def read_frame(path: str, kind: str, frame: int, options: FrameOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """One decoded frame (``[H, W]`` or ``[H, W, 3]`` RGB), any dtype."""
    if kind == "image":
        from PIL import Image
        with Image.open(path) as im:
            if frame:
                im.seek(frame)
            im.load()
            return _pil_frame(im)
    if kind == "dicom":
        from pydicom.pixels import pixel_array
        ds = _dicom(path, _mtime(path))
        n = int(ds.get("NumberOfFrames", 1) or 1)
        arr = pixel_array(ds, index=frame) if n > 1 else pixel_array(ds)
        return _dicom_frame(ds, arr)
    if kind == "nifti":
        return _nifti_slice(_nifti_array(path, _mtime(path)), frame, options.nifti_axis)
    if kind == "video":
        return formats.read_video_frame(path, frame, options.video_stride)
    if kind == "hdf5":
        return formats.read_hdf5_frame(path, frame, options.h5_key)
    if kind == "metaimage":
        return formats.read_metaimage_frame(path, frame)
    raise BadFileError(f"unknown file kind {kind!r}")


def _nifti_slice(array: np.ndarray, frame: int, nifti_axis: int) -> np.ndarray:
    shape, ax, frames = _nifti_layout(array.shape, nifti_axis)
    array = array.reshape(shape)
    if len(shape) == 2:
        return np.asarray(array)
    if not 0 <= frame < frames:
        raise IndexError(f"frame {frame} out of range ({frames})")
    t, k = divmod(frame, shape[ax])
    vol = array[..., t] if len(shape) == 4 else array
    return np.asarray(np.take(vol, k, axis=ax))


def iter_frames(path: str, kind: str, options: FrameOptions = DEFAULT_OPTIONS) -> Iterator[np.ndarray]:
    """All frames of a file, decoding it once (the prepare step)."""
    if kind == "image":
        from PIL import Image
        with Image.open(path) as im:
            for i in range(int(getattr(im, "n_frames", 1))):
                im.seek(i)
                im.load()
                yield _pil_frame(im)
    elif kind == "dicom":
        import pydicom
        from pydicom.pixels import pixel_array
        ds = pydicom.dcmread(path)
        arr = pixel_array(ds)
        n = int(ds.get("NumberOfFrames", 1) or 1)
        if n == 1:
            arr = arr[None]
        for i in range(n):
            yield _dicom_frame(ds, arr[i])
    elif kind == "nifti":
        import nibabel as nib
        array = np.asanyarray(nib.load(path).dataobj)
        for i in range(_nifti_layout(array.shape, options.nifti_axis)[2]):
            yield _nifti_slice(array, i, options.nifti_axis)
    elif kind == "video":
        yield from formats.iter_video(path, options.video_stride)
    elif kind == "hdf5":
        yield from formats.iter_hdf5(path, options.h5_key)
    elif kind == "metaimage":
        yield from formats.iter_metaimage(path)
    else:
        raise BadFileError(f"unknown file kind {kind!r}")


def dicom_region(ds) -> np.ndarray | None:
    """The scan-region bound of a DICOM object from ``SequenceOfUltrasoundRegions`` (bool ``[Rows, Columns]``,
    the union of the regions' rectangles; only the 2-D tissue regions, RegionSpatialFormat 1, when there are
    any), or None when the object has no such sequence."""
    regions = list(ds.get("SequenceOfUltrasoundRegions", None) or [])
    rects = []
    for r in regions:
        try:
            rect = tuple(int(r[k].value) for k in ("RegionLocationMinX0", "RegionLocationMinY0",
                                                   "RegionLocationMaxX1", "RegionLocationMaxY1"))
        except KeyError:
            continue
        rects.append((int(r.get("RegionSpatialFormat", 0) or 0), rect))
    if not rects or "Rows" not in ds or "Columns" not in ds:
        return None
    tissue = [rect for fmt, rect in rects if fmt == 1]
    mask = np.zeros((int(ds.Rows), int(ds.Columns)), bool)
    for x0, y0, x1, y1 in tissue or [rect for _, rect in rects]:
        mask[max(y0, 0):y1 + 1, max(x0, 0):x1 + 1] = True
    return mask if mask.any() else None


def file_region(path: str, kind: str) -> np.ndarray | None:
    """A file's own scan-region bound (DICOM ultrasound regions), or None."""
    if kind != "dicom":
        return None
    import pydicom
    return dicom_region(pydicom.dcmread(path, stop_before_pixels=True))


def read_mask(path: str | None) -> np.ndarray | None:
    if not path:
        return None
    from PIL import Image
    with Image.open(path) as im:
        arr = np.asarray(im.convert("L"))
    return arr > 0


# ------------------------------------------------------------------------------------------------ scanning
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


def _fail(on_error: str, skipped: list, relpath: str, exc: BaseException, dataset: str) -> None:
    reason = f"{type(exc).__name__}: {exc}"
    if on_error == "raise":
        raise BadFileError(f"{dataset}/{relpath}: {reason}") from exc
    log.warning("skipping %s/%s: %s", dataset, relpath, reason)
    skipped.append({"file": relpath, "reason": reason})


def _check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r}: expected one of {ON_ERROR}.")


def list_files(root: str | os.PathLike) -> tuple[list[tuple[str, str, str]], dict[str, int]]:
    """(absolute path, relative path, kind) of every frame file under ``root`` (or ``root`` itself), sorted, and
    the count by extension of the other files (hidden files and MetaImage data files are neither)."""
    root = Path(root)
    out, unread = [], {}

    def add(path: str, rel: str) -> None:
        kind = file_kind(path)
        if kind:
            out.append((path, rel, kind))
        elif not formats.is_metaimage_data(path):
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


def list_frame_files(root: str | os.PathLike) -> list[tuple[str, str, str]]:
    """(absolute path, relative path, kind) of every frame file under ``root`` (or ``root`` itself), sorted."""
    return list_files(root)[0]


def require_decoders(kinds: set, where) -> None:
    """Fail once, naming the extra to install, when a decoder is missing (instead of skipping every file)."""
    for kind, module, extra in (("dicom", "pydicom", "dicom"), ("nifti", "nibabel", "nifti"), ("video", "av", "video"),
                                ("hdf5", "h5py", "hdf5")):
        if kind in kinds:
            usjepa_jax.require(module, extra, f"{where}: reading its {kind.upper()} files")


def is_ultrabench(root: str | os.PathLike) -> bool:
    root = Path(root)
    return root.is_dir() and (root / "images").is_dir() and (
        (root / "train_val.json").exists() or (root / "test.json").exists())


def scan_files(root: str | os.PathLike, name: str | None = None, on_error: str = "skip",
               options: FrameOptions = DEFAULT_OPTIONS) -> DatasetScan:
    """A folder (recursively) or one file of frame files (any readable kind, mixed); dataset name = folder
    name. Files of other extensions are counted in ``unread`` (and logged)."""
    _check_on_error(on_error)
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
            _fail(on_error, skipped, rel, exc, name)
    scan = DatasetScan(name, str(root), entries, skipped, unread=unread)
    log_unread(scan)
    return scan


def checked_frames(path: str, kind: str, options: FrameOptions = DEFAULT_OPTIONS) -> int:
    """``count_frames``, failing (``BadFileError``) on a file without frames."""
    n = count_frames(path, kind, options)
    if n < 1:
        raise BadFileError("no frames")
    return n


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


def _find_mask(mask_dir: Path, rel: str) -> str | None:
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
                    options: FrameOptions = DEFAULT_OPTIONS) -> DatasetScan:
    """One UltraBench dataset folder ``<dataset>_v<version>`` (see the module docstring for the JSON schema)."""
    _check_on_error(on_error)
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
            entries.append(FileEntry(str(path), rel, kind, n, lab, _find_mask(root / "masks" / "scan", rel), split))
        except Exception as exc:  # noqa: BLE001
            _fail(on_error, skipped, rel, exc, name)
    return DatasetScan(name, str(root), entries, skipped, names or None)


def scan_input(path: str | os.PathLike, on_error: str = "skip",
               options: FrameOptions = DEFAULT_OPTIONS) -> list[DatasetScan]:
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


# ------------------------------------------------------------------------------------------------ raw sources
class FilesSource:
    """The frames of some files of one dataset, decoded and preprocessed on access."""

    def __init__(self, name: str, entries: Sequence[FileEntry], preprocess: pp.PreprocessConfig,
                 on_error: str = "skip", options: FrameOptions = DEFAULT_OPTIONS):
        _check_on_error(on_error)
        self.name, self.entries = name, list(entries)
        self.preprocess, self.on_error, self.options = preprocess, on_error, options
        counts = np.array([e.frames for e in self.entries], np.int64)
        self._file = np.repeat(np.arange(len(self.entries), dtype=np.int32), counts)
        self._starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return int(self._file.size)

    def locate(self, index: int) -> tuple[FileEntry, int]:
        f = int(self._file[index])
        return self.entries[f], int(index - self._starts[f])

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
            f = int(self._file[i])
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


# ------------------------------------------------------------------------------------------------ prepared
RECORD_MAGIC = b"USJ1"
_HEADER = struct.Struct("<4sHHiiI")  # magic, height, width, label, frame, crc32 of "<dataset>/<file>"
SHARD_SUFFIX = ".array_record"


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


_READERS: dict[str, Any] = {}


def _reader(path: str):
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
        counts = np.array([f["frames"] for f in self.files], np.int64)
        self._file = np.repeat(np.arange(len(self.files), dtype=np.int32), counts)
        self._starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._file.size)

    def _locate(self, index: int) -> tuple[dict, int]:
        f = int(self._file[index])
        return self.files[f], int(index - self._starts[f])

    def provenance(self, index: int) -> dict[str, Any]:
        f, frame = self._locate(index)
        return {"dataset": f["dataset"], "file": f["file"], "frame": frame}

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} frames")
        f, frame = self._locate(index)
        data = _reader(self.shard_paths[f["shard_id"]]).read([f["offset"] + frame])[0]
        r = decode_record(data)
        return {"image": r["image"], "scan_mask": r["scan_mask"], "label": r["label"], "index": np.int32(index)}

    def __repr__(self) -> str:
        return f"PreparedSource({self.name!r}, files={len(self.files)}, frames={len(self)})"


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
    from usjepa_jax.data.mixture import ConcatSource, MixtureSource, SubsetSource
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
