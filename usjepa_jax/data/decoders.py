"""Decoders: a frame file's kind, its frame count, one frame or all of them (any dtype, ``[H, W]`` or RGB).

Kinds (``file_kind``), all later brought to uint8 by ``preprocess.preprocess_frame``:

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
  ``.mha``): ``containers.py``. ``FrameOptions`` holds the choices these formats need (NIfTI axis, video stride,
  HDF5 dataset key); configs set them as ``data.nifti_axis``, ``data.video_stride``, ``data.h5_key``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

import usjepa_jax
from usjepa_jax.data import containers

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
DICOM_EXTS = (".dcm", ".dicom", ".dic")
NIFTI_EXTS = (".nii", ".nii.gz")
# Extension groups by kind (for messages and the README): what ``file_kind`` recognises.
READABLE = {"image": IMAGE_EXTS, "dicom": DICOM_EXTS + ("(none, with the DICM preamble)",), "nifti": NIFTI_EXTS,
            "video": containers.VIDEO_EXTS, "hdf5": containers.HDF5_EXTS, "metaimage": containers.METAIMAGE_EXTS}


@dataclasses.dataclass(frozen=True)
class FrameOptions:
    """How frames are taken out of containers: NIfTI slice axis, video stride, HDF5 dataset key."""

    nifti_axis: int = -1
    video_stride: int = 1
    h5_key: str = ""

    def __post_init__(self):
        if int(self.video_stride) < 1:
            raise ValueError(f"video_stride={self.video_stride} must be at least 1.")

    @classmethod
    def from_config(cls, cfg: Any) -> FrameOptions:
        """From a config section with (some of) ``nifti_axis``, ``video_stride``, ``h5_key``."""
        get = cfg.get if hasattr(cfg, "get") else lambda k, d: getattr(cfg, k, d)
        return cls(int(get("nifti_axis", -1)), int(get("video_stride", 1)), str(get("h5_key", "") or ""))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DEFAULT_FRAME_OPTIONS = FrameOptions()


class BadFileError(RuntimeError):
    """A file that cannot be read; the message names the file and the reason."""


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
    if name.endswith(containers.VIDEO_EXTS):
        return "video"
    if name.endswith(containers.HDF5_EXTS):
        return "hdf5"
    if name.endswith(containers.METAIMAGE_EXTS):
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


def require_decoders(kinds: set, where) -> None:
    """Fail once, naming the extra to install, when a decoder is missing (instead of skipping every file)."""
    for kind, module, extra in (("dicom", "pydicom", "dicom"), ("nifti", "nibabel", "nifti"), ("video", "av", "video"),
                                ("hdf5", "h5py", "hdf5")):
        if kind in kinds:
            usjepa_jax.require(module, extra, f"{where}: reading its {kind.upper()} files")


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


def count_frames(path: str, kind: str, options: FrameOptions = DEFAULT_FRAME_OPTIONS) -> int:
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
        return containers.video_frames(path, options.video_stride)
    if kind == "hdf5":
        return containers.hdf5_frames(path, options.h5_key)
    if kind == "metaimage":
        return containers.metaimage_frames(path)
    raise BadFileError(f"unknown file kind {kind!r}")


def checked_frames(path: str, kind: str, options: FrameOptions = DEFAULT_FRAME_OPTIONS) -> int:
    """``count_frames``, failing (``BadFileError``) on a file without frames."""
    n = count_frames(path, kind, options)
    if n < 1:
        raise BadFileError("no frames")
    return n


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


def read_frame(path: str, kind: str, frame: int, options: FrameOptions = DEFAULT_FRAME_OPTIONS) -> np.ndarray:
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
        return containers.read_video_frame(path, frame, options.video_stride)
    if kind == "hdf5":
        return containers.read_hdf5_frame(path, frame, options.h5_key)
    if kind == "metaimage":
        return containers.read_metaimage_frame(path, frame)
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


def iter_frames(path: str, kind: str, options: FrameOptions = DEFAULT_FRAME_OPTIONS) -> Iterator[np.ndarray]:
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
        yield from containers.iter_video(path, options.video_stride)
    elif kind == "hdf5":
        yield from containers.iter_hdf5(path, options.h5_key)
    elif kind == "metaimage":
        yield from containers.iter_metaimage(path)
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


# ------------------------------------------------------------------------------------------------ frames of files
class FrameIndex:
    """One flat index over the frames of some files, file by file: ``locate(i) -> (the file, its frame)``."""

    def __init__(self, files: Sequence, frames_per_file: Sequence[int]):
        self.files = files
        counts = np.array(frames_per_file, np.int64)
        self._file = np.repeat(np.arange(counts.size, dtype=np.int32), counts)
        self._starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._file.size)

    def file_of(self, index: int) -> int:
        return int(self._file[index])

    def locate(self, index: int) -> tuple[Any, int]:
        f = int(self._file[index])
        return self.files[f], int(index - self._starts[f])
