"""Frame containers beyond images / DICOM / NIfTI: cine video, HDF5, MetaImage. Each reader counts a file's
frames cheaply, decodes one frame (random access), or iterates over all of them decoding the file once.

* **video** (``.avi .mp4 .mov .mkv .m4v``) through PyAV (FFmpeg's libraries; the optional extra ``video``):
  frames are decoded to RGB (coloured annotations are then inpainted like any RGB frame);
  ``video_stride`` keeps every k-th frame (0, k, 2k, ...). The count comes from the container's frame count
  (``stream.frames``), or from counting the video packets where the container does not record one.
* **HDF5** (``.h5 .hdf5``) through h5py (the optional extra ``hdf5``): the dataset ``h5_key`` or, when that is
  empty, the only numeric dataset of 2 or more dimensions in the file; with several, the first whose last path
  component is one of ``H5_DEFAULT_NAMES``, otherwise an error that lists them. Layouts (C order, frames on the leading
  axes): ``[H, W]`` one frame; ``[H, W, C]`` with C in (3, 4) one colour frame; ``[N, H, W]`` N frames;
  ``[N, H, W, C]`` with C in (1, 3, 4) N frames; ``[T, Z, H, W]`` T * Z frames. Frames are read lazily.
* **MetaImage** (``.mhd`` + ``.raw``/``.zraw``, or ``.mha`` with the data inline) by a small reader of the
  text header (``NDims``, ``DimSize``, ``ElementType``, ``ElementDataFile``, ``CompressedData`` (zlib),
  ``BinaryDataByteOrderMSB``/``ElementByteOrderMSB``, ``ElementNumberOfChannels``, ``HeaderSize``): ``DimSize``
  is x (fastest) first, so the array is ``[T, Z, Y, X]``; a 2-D image is one frame, a 3-D one (a volume, or
  CAMUS's 2-D+t sequences) one frame per index of its slowest axis, a 4-D one T * Z frames. The ``.raw``/
  ``.zraw`` file next to an ``.mhd`` of the same stem is its data, not a file of its own.
"""

from __future__ import annotations

import functools
import math
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

VIDEO_EXTS = (".avi", ".mp4", ".mov", ".mkv", ".m4v")
HDF5_EXTS = (".h5", ".hdf5")
METAIMAGE_EXTS = (".mhd", ".mha")
METAIMAGE_DATA_EXTS = (".raw", ".zraw")  # companions of an .mhd, read through it
H5_DEFAULT_NAMES = ("image", "images", "frames", "data", "video", "volume", "tissue", "us", "bmode")



class FormatError(RuntimeError):
    """A container that cannot be read as frames; the message says why."""


def _missing(package: str, extra: str, exc: ImportError) -> FormatError:
    return FormatError(f"reading this format needs the optional package {package!r}: pip install "
                       f"'usjepa_jax[{extra}]' (or -r requirements.txt, which pins it): {exc}")


# ------------------------------------------------------------------------------------------------ video
def _av():
    try:
        import av
    except ImportError as exc:
        raise _missing("av", "video", exc) from exc
    return av


def video_frames(path: str, stride: int = 1) -> int:
    av = _av()
    with av.open(path) as container:
        if not container.streams.video:
            raise FormatError("no video stream")
        stream = container.streams.video[0]
        n = int(stream.frames or 0)
        if n <= 0:  # containers without a frame count: count the packets that carry a frame
            n = sum(1 for packet in container.demux(stream) if packet.size)
    return math.ceil(n / stride)


def iter_video(path: str, stride: int = 1) -> Iterator[np.ndarray]:
    """Every ``stride``-th frame, RGB uint8 ``[H, W, 3]``."""
    av = _av()
    with av.open(path) as container:
        if not container.streams.video:
            raise FormatError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i % stride == 0:
                yield frame.to_ndarray(format="rgb24")


@functools.lru_cache(maxsize=2)
def _video_array(path: str, mtime: float, stride: int) -> np.ndarray:
    return np.stack(list(iter_video(path, stride)))


def read_video_frame(path: str, frame: int, stride: int = 1) -> np.ndarray:
    """Random access decodes the whole clip once (kept for the next frames of the same file)."""
    frames = _video_array(path, os.stat(path).st_mtime, stride)
    if not 0 <= frame < len(frames):
        raise IndexError(f"frame {frame} out of range ({len(frames)} decoded)")
    return frames[frame]


# ------------------------------------------------------------------------------------------------ HDF5
def _h5py():
    try:
        import h5py
    except ImportError as exc:
        raise _missing("h5py", "hdf5", exc) from exc
    return h5py


def _h5_dataset(f, key: str, path: str):
    h5py = _h5py()
    if key:
        if key not in f:
            raise FormatError(f"{path}: no dataset {key!r} (h5_key); datasets: {_h5_candidates(f) or 'none'}")
        ds = f[key]
        if not isinstance(ds, h5py.Dataset):
            raise FormatError(f"{path}: {key!r} is a group, not a dataset")
        return ds
    candidates = _h5_candidates(f)
    if not candidates:
        raise FormatError(f"{path}: no numeric dataset of 2 or more dimensions")
    if len(candidates) == 1:
        return f[candidates[0]]
    for name in candidates:
        if name.rsplit("/", 1)[-1].lower() in H5_DEFAULT_NAMES:
            return f[name]
    raise FormatError(f"{path}: several image-like datasets {candidates}; choose one with h5_key "
                      "(prepare --h5-key, config.data.h5_key)")


def _h5_candidates(f) -> list[str]:
    h5py = _h5py()
    out = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.ndim >= 2 and obj.dtype.kind in "uifb":
            out.append(name)

    f.visititems(visit)
    return out


def frame_layout(shape: tuple[int, ...]) -> tuple[int, int]:
    """(frames, leading axes that index frames) of an HDF5 / MetaImage array shape (see the module docstring)."""
    if len(shape) == 2:
        return 1, 0
    if len(shape) == 3:
        return (1, 0) if shape[-1] in (3, 4) else (shape[0], 1)
    if len(shape) == 4:
        return (shape[0], 1) if shape[-1] in (1, 3, 4) else (shape[0] * shape[1], 2)
    raise FormatError(f"arrays of shape {shape} are not frames (expected 2 to 4 dimensions)")


def _take(array, frame: int, lead: int) -> np.ndarray:
    """Frame ``frame`` of an array (numpy or a lazy h5py dataset) whose first ``lead`` axes index frames."""
    if lead == 0:
        if frame != 0:
            raise IndexError(f"frame {frame} out of range (1)")
        return np.asarray(array[()])
    index = np.unravel_index(frame, array.shape[:lead])
    return np.asarray(array[tuple(int(i) for i in index)])


def hdf5_frames(path: str, key: str = "") -> int:
    with _h5py().File(path, "r") as f:
        return frame_layout(_h5_dataset(f, key, path).shape)[0]


def read_hdf5_frame(path: str, frame: int, key: str = "") -> np.ndarray:
    with _h5py().File(path, "r") as f:
        ds = _h5_dataset(f, key, path)
        n, lead = frame_layout(ds.shape)
        if not 0 <= frame < n:
            raise IndexError(f"frame {frame} out of range ({n})")
        return _take(ds, frame, lead)


def iter_hdf5(path: str, key: str = "") -> Iterator[np.ndarray]:
    with _h5py().File(path, "r") as f:
        ds = _h5_dataset(f, key, path)
        n, lead = frame_layout(ds.shape)
        for i in range(n):
            yield _take(ds, i, lead)


# ------------------------------------------------------------------------------------------------ MetaImage
_MET_TYPES = {"MET_UCHAR": "u1", "MET_CHAR": "i1", "MET_USHORT": "u2", "MET_SHORT": "i2", "MET_UINT": "u4",
              "MET_INT": "i4", "MET_ULONG": "u4", "MET_LONG": "i4", "MET_ULONG_LONG": "u8", "MET_LONG_LONG": "i8",
              "MET_FLOAT": "f4", "MET_DOUBLE": "f8"}


def read_metaimage_header(path: str) -> tuple[dict[str, str], int]:
    """(``Key = Value`` fields, byte offset just past the header line ``ElementDataFile``)."""
    fields: dict[str, str] = {}
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            offset += len(raw)
            line = raw.decode("latin-1").strip()
            if not line:
                continue
            if "=" not in line:
                raise FormatError(f"not a MetaImage header line: {line[:60]!r}")
            key, value = (s.strip() for s in line.split("=", 1))
            fields[key] = value
            if key == "ElementDataFile":
                break
            if offset > 1 << 16:
                break
    missing = [k for k in ("NDims", "DimSize", "ElementType", "ElementDataFile") if k not in fields]
    if missing:
        raise FormatError(f"MetaImage header without {missing}")
    return fields, offset


def _metaimage_shape(fields: dict[str, str]) -> tuple[tuple[int, ...], np.dtype]:
    dims = [int(v) for v in fields["DimSize"].split()]
    if len(dims) != int(fields["NDims"]):
        raise FormatError(f"DimSize {dims} does not have NDims={fields['NDims']} values")
    if fields["ElementType"] not in _MET_TYPES:
        raise FormatError(f"ElementType {fields['ElementType']!r} not supported ({sorted(_MET_TYPES)})")
    msb = (fields.get("BinaryDataByteOrderMSB") or fields.get("ElementByteOrderMSB") or "False").lower() == "true"
    dtype = np.dtype(_MET_TYPES[fields["ElementType"]]).newbyteorder(">" if msb else "<")
    shape = tuple(reversed(dims))
    channels = int(fields.get("ElementNumberOfChannels", 1))
    if channels > 1:
        shape = shape + (channels,)
    return shape, dtype


def metaimage_frames(path: str) -> int:
    fields, _ = read_metaimage_header(path)
    shape, _ = _metaimage_shape(fields)
    return frame_layout(shape)[0]


@functools.lru_cache(maxsize=2)
def _metaimage_array(path: str, mtime: float) -> np.ndarray:
    fields, offset = read_metaimage_header(path)
    shape, dtype = _metaimage_shape(fields)
    count = int(np.prod(shape))
    name = fields["ElementDataFile"]
    if name.upper() == "LOCAL":
        data_path, start = path, offset
    elif name.upper().startswith("LIST") or "%" in name:
        raise FormatError(f"ElementDataFile {name!r}: multi-file MetaImage data is not supported")
    else:
        data_path, start = str(Path(path).parent / name), 0
        if not os.path.exists(data_path):
            raise FormatError(f"data file {data_path} (ElementDataFile) does not exist")
    header_size = int(fields.get("HeaderSize", 0))
    compressed = fields.get("CompressedData", "False").lower() == "true"
    with open(data_path, "rb") as f:
        f.seek(start)
        blob = f.read()
    if compressed:
        try:
            blob = zlib.decompress(blob)
        except zlib.error as exc:
            raise FormatError(f"{data_path}: CompressedData = True but the data does not inflate: {exc}") from exc
    nbytes = count * dtype.itemsize
    if header_size == -1:
        blob = blob[len(blob) - nbytes:]
    elif header_size > 0:
        blob = blob[header_size:]
    if len(blob) < nbytes:
        raise FormatError(f"{data_path}: {len(blob)} bytes of data, DimSize x ElementType needs {nbytes}")
    return np.frombuffer(blob, dtype, count).reshape(shape)


def read_metaimage_frame(path: str, frame: int) -> np.ndarray:
    array = _metaimage_array(path, os.stat(path).st_mtime)
    n, lead = frame_layout(array.shape)
    if not 0 <= frame < n:
        raise IndexError(f"frame {frame} out of range ({n})")
    return _take(array, frame, lead)


def iter_metaimage(path: str) -> Iterator[np.ndarray]:
    array = _metaimage_array(path, os.stat(path).st_mtime)
    n, lead = frame_layout(array.shape)
    for i in range(n):
        yield _take(array, i, lead)


def is_metaimage_data(path: str | os.PathLike) -> bool:
    """A ``.raw``/``.zraw`` next to an ``.mhd`` of the same stem (read through the header)."""
    p = Path(path)
    return p.suffix.lower() in METAIMAGE_DATA_EXTS and any(
        p.with_suffix(ext).exists() or p.with_suffix(ext.upper()).exists() for ext in (".mhd",))
