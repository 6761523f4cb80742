"""Reading and writing flat state dicts (``{dotted.name: numpy array}``): safetensors, npz, PyTorch pickles.

safetensors files are read and written by the ``safetensors`` package (no torch): ``safetensors.numpy.save`` writes,
``safetensors.deserialize`` parses and checks a file (its header, offsets and sizes). ``safetensors.numpy.load``
itself is not used to read because numpy has no bfloat16 and that function has no BF16 entry; the dtype table below
maps BF16 to ``ml_dtypes.bfloat16`` (a jax dependency). Files are read and written as bytes through
``storage`` (local paths and gs:// alike).

PyTorch ``.pth/.pt/.bin/.ckpt`` files are pickles: they are read with ``torch.load(..., weights_only=True)`` only
(torch is imported for this alone). A pickle that needs anything beyond tensors and plain containers is refused
and never executed; convert such a file to safetensors in an environment you trust.
"""

from __future__ import annotations

import json
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy
from flax import traverse_util

from usjepa_jax import storage

SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_DTYPE_NAMES = {dt: name for name, dt in SAFETENSORS_DTYPES.items()}
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl")
FORMATS = ("auto", "safetensors", "npz", "torch")


# ------------------------------------------------------------------------------------------------ safetensors
def read_safetensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``path`` -> (tensors as numpy arrays, the header's ``__metadata__``). Raises ValueError on a bad file."""
    path = storage.path(path)
    data = path.read_bytes()
    try:
        entries = safetensors.deserialize(data)  # validates the header, dtypes, offsets and sizes
    except Exception as e:  # safetensors.SafetensorError (and a few Rust-side errors) on a malformed file
        raise ValueError(f"{path}: not a safetensors file ({e}).") from None
    (n,) = struct.unpack("<Q", data[:8])  # the header, already validated: only its __metadata__ is read here
    metadata = json.loads(data[8:8 + n]).get("__metadata__") or {}
    tensors = {}
    for name, info in entries:
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {info['dtype']}, not one of "
                             f"{sorted(SAFETENSORS_DTYPES)}.")
        tensors[name] = np.frombuffer(info["data"], SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])
    return tensors, metadata


def write_safetensors(path: str | Path, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` (numpy arrays of the dtypes above) as a safetensors file (``safetensors.numpy.save``)."""
    arrays = {}
    for name, value in tensors.items():
        arr = np.asarray(value, order="C")  # the writer reads raw memory: C-contiguous (scalars stay 0-d)
        if arr.dtype.newbyteorder("=") not in _DTYPE_NAMES:
            raise ValueError(f"Cannot write tensor {name!r} of dtype {arr.dtype} to safetensors.")
        arrays[name] = arr
    meta = {str(k): str(v) for k, v in metadata.items()} if metadata else None
    with storage.path(path).open("wb") as f:
        f.write(safetensors.numpy.save(arrays, metadata=meta))


# ------------------------------------------------------------------------------------------------ npz / torch
def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """An ``np.savez`` archive of named arrays (pickled objects are refused)."""
    with storage.path(path).open("rb") as f, np.load(f, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def flatten_state(obj: Any) -> dict[str, Any]:
    """Nested dicts -> ``{"a.b.c": leaf}`` (``flax.traverse_util.flatten_dict``; keys joined here, since a
    checkpoint's optimizer state has integer keys); only array-like leaves (numpy, torch tensors) are kept."""
    if not isinstance(obj, Mapping):
        return {}
    flat = traverse_util.flatten_dict(dict(obj))
    return {".".join(map(str, key)): leaf for key, leaf in flat.items() if hasattr(leaf, "shape")
            and hasattr(leaf, "dtype")}


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
