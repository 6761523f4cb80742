"""Reading and writing flat state dicts (``{dotted.name: numpy array}``): safetensors, npz, PyTorch pickles.

safetensors is parsed here with numpy (no torch, no extra package). The format: an 8-byte little-endian unsigned
header length ``n``, then ``n`` bytes of JSON ``{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin,
end]}, "__metadata__": {str: str}}``, then the raw little-endian tensor bytes; offsets are relative to the end of
the header. bfloat16 comes from ``ml_dtypes`` (a jax dependency).

PyTorch ``.pth/.pt/.bin/.ckpt`` files are pickles: they are read with ``torch.load(..., weights_only=True)`` only
(torch is imported for this alone). A pickle that needs anything beyond tensors and plain containers is refused
and never executed; convert such a file to safetensors in an environment you trust.
"""

from __future__ import annotations

import json
import pickle
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from usjepa_jax import storage

SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_DTYPE_NAMES = {dt: name for name, dt in SAFETENSORS_DTYPES.items()}
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl")
FORMATS = ("auto", "safetensors", "npz", "torch")
_MAX_HEADER = 100 * 2**20


# ------------------------------------------------------------------------------------------------ safetensors
def read_safetensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``path`` -> (tensors as numpy arrays, the header's ``__metadata__``). Raises ValueError on a bad file."""
    path = storage.path(path)
    data = path.read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length).")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(_MAX_HEADER, len(data) - 8):
        raise ValueError(f"{path}: not a safetensors file (header length {n} does not fit the file).")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a safetensors file (header is not JSON: {e}).") from None
    metadata = header.pop("__metadata__", None) or {}
    body = memoryview(data)[8 + n:]
    tensors = {}
    for name, info in header.items():
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {info['dtype']}, not one of "
                             f"{sorted(SAFETENSORS_DTYPES)}.")
        dtype = SAFETENSORS_DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        shape = tuple(int(s) for s in info["shape"])
        if not 0 <= begin <= end <= len(body) or end - begin != int(np.prod(shape)) * dtype.itemsize:
            raise ValueError(f"{path}: tensor {name!r} ({info['dtype']} {list(shape)}) has inconsistent data "
                             f"offsets {[begin, end]} (body is {len(body)} bytes).")
        tensors[name] = np.frombuffer(body[begin:end], dtype=dtype).reshape(shape).copy()
    return tensors, metadata


def write_safetensors(path: str | Path, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` (numpy arrays of the dtypes above) as a safetensors file, in name order."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    chunks, offset = [], 0
    for name in sorted(tensors):
        arr = np.asarray(tensors[name], order="C")  # (ascontiguousarray would make scalars 1-d)
        arr = arr.astype(arr.dtype.newbyteorder("<")) if arr.dtype.byteorder == ">" else arr
        if arr.dtype not in _DTYPE_NAMES:
            raise ValueError(f"Cannot write tensor {name!r} of dtype {arr.dtype} to safetensors.")
        raw = arr.tobytes()
        header[name] = {"dtype": _DTYPE_NAMES[arr.dtype], "shape": list(arr.shape),
                            "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)  # pad so the tensor data starts 8-byte aligned
    with storage.path(path).open("wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for raw in chunks:
            f.write(raw)


# ------------------------------------------------------------------------------------------------ npz / torch
def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """An ``np.savez`` archive of named arrays (pickled objects are refused)."""
    with storage.path(path).open("rb") as f, np.load(f, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def flatten_state(obj: Any, prefix: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Nested mappings -> ``{"a.b.c": leaf}``; only array-like leaves (numpy, torch tensors) are kept."""
    out = {} if out is None else out
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            flatten_state(value, f"{prefix}{key}.", out)
    elif hasattr(obj, "shape") and hasattr(obj, "dtype"):
        out[prefix[:-1]] = obj
    return out


def read_torch(path: str | Path) -> dict[str, np.ndarray]:
    """A PyTorch pickle read with ``weights_only=True``; refuses (never runs) anything else."""
    try:
        import torch
    except ImportError:
        raise ImportError(f"Reading {path} needs torch (pip install 'usjepa_jax[torch]'), or convert the file to .safetensors "
                          f"elsewhere and load that (no torch needed).") from None
    try:
        with storage.path(path).open("rb") as f:
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises pickle.UnpicklingError (or RuntimeError in some versions)
        if isinstance(e, pickle.UnpicklingError) or "weights_only" in str(e) or "Weights only" in str(e):
            lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(e).splitlines()]
            useful = [line for line in lines if "Unsupported" in line or "WeightsUnpickler" in line]
            reason = (useful or [line for line in lines if line] or [type(e).__name__])[0]
            raise ValueError(
                f"Refusing to load {path}: it is a pickle that needs more than tensors and plain containers "
                f"(torch.load(weights_only=True) failed: {reason}). Loading it "
                f"fully could run arbitrary code. If you trust the file, convert it to safetensors in a separate "
                f"environment (e.g. safetensors.torch.save_file(state_dict, 'model.safetensors')) and load "
                f"that.") from None
        raise
    flat = flatten_state(obj)
    return {name: _torch_to_numpy(t) for name, t in flat.items()}


def _torch_to_numpy(t: Any) -> np.ndarray:
    if isinstance(t, np.ndarray):
        return t
    t = t.detach().cpu()
    if str(t.dtype) == "torch.bfloat16":
        import torch
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


# ------------------------------------------------------------------------------------------------ dispatch
def detect_format(path: str | Path) -> str:
    """``safetensors`` | ``npz`` | ``torch`` from the suffix (then the magic bytes)."""
    path = storage.path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return "safetensors"
    if suffix == ".npz":
        return "npz"
    if suffix in TORCH_SUFFIXES:
        return "torch"
    with path.open("rb") as f:
        head = f.read(9)
    if head[:2] == b"PK":  # zip: npz or a torch>=1.6 archive
        import zipfile
        with path.open("rb") as f, zipfile.ZipFile(f) as z:
            return "npz" if all(n.endswith(".npy") for n in z.namelist()) else "torch"
    if head[:1] == b"\x80":  # a bare pickle (legacy torch.save, or pickle.dump of a state dict)
        return "torch"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    raise ValueError(f"{path}: cannot tell the checkpoint format from its name or content; pass the format "
                     f"explicitly (one of {FORMATS[1:]}).")


def read_state_dict(path: str | Path, fmt: str = "auto") -> dict[str, np.ndarray]:
    """Any supported file -> flat ``{dotted.name: numpy array}`` (nested torch dicts flattened with dots)."""
    if fmt not in FORMATS:
        raise ValueError(f"Unknown checkpoint format {fmt!r}: expected one of {FORMATS}.")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "safetensors":
        return read_safetensors(path)[0]
    if fmt == "npz":
        return read_npz(path)
    return read_torch(path)
