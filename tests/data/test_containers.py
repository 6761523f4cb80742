"""Cine video, HDF5 and MetaImage inputs (data/containers.py): each container written here by its own library
(or by hand for MetaImage's text header) prepares into the right number of frames."""

import zlib

import numpy as np
import pytest

from tests.conftest import write_video
from usjepa_jax.data import containers, decoders, prepare, scanning
from usjepa_jax.data import sources as src


def write_mhd(folder, stem, array, compressed=False, element_type="MET_SHORT", local=False):
    """A MetaImage as CAMUS ships it: text header + raw (or zlib .zraw) data, x fastest (numpy C order reversed)."""
    dims = " ".join(str(s) for s in reversed(array.shape))
    data = np.ascontiguousarray(array).tobytes()
    if compressed:
        data = zlib.compress(data)
    name = "LOCAL" if local else f"{stem}.{'zraw' if compressed else 'raw'}"
    header = (f"ObjectType = Image\nNDims = {array.ndim}\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
              f"CompressedData = {compressed}\n" + (f"CompressedDataSize = {len(data)}\n" if compressed else "")
              + f"ElementSpacing = {' '.join(['0.3'] * array.ndim)}\nDimSize = {dims}\n"
              f"ElementType = {element_type}\nElementDataFile = {name}\n")
    suffix = ".mha" if local else ".mhd"
    if local:
        (folder / f"{stem}{suffix}").write_bytes(header.encode() + data)
    else:
        (folder / f"{stem}{suffix}").write_text(header)
        (folder / name).write_bytes(data)


def test_video_prepares_into_every_frame_or_a_stride(tmp_path, frames_of):
    folder = tmp_path / "echo"
    folder.mkdir()
    clip = frames_of(7)
    write_video(folder / "a.avi", clip, "ffv1")  # lossless: frames compare exactly
    write_video(folder / "b.mp4", frames_of(5), "mpeg4")
    scan = scanning.scan_files(folder)
    assert {e.relpath: (e.kind, e.frames) for e in scan.entries} == {"a.avi": ("video", 7), "b.mp4": ("video", 5)}
    assert np.array_equal(decoders.read_frame(str(folder / "a.avi"), "video", 3)[..., 0], clip[3])
    strided = decoders.FrameOptions(video_stride=3)
    assert decoders.count_frames(str(folder / "a.avi"), "video", strided) == 3  # frames 0, 3, 6
    assert np.array_equal(list(decoders.iter_frames(str(folder / "a.avi"), "video", strided))[2][..., 0], clip[6])

    m = prepare.prepare([str(folder)], str(tmp_path / "out"), size=32, progress=False)
    assert m["datasets"]["echo"]["frames"] == 12 and not m["datasets"]["echo"]["skipped"]
    m = prepare.prepare([str(folder)], str(tmp_path / "out2"), size=32, progress=False,
                        frame_options=decoders.FrameOptions(video_stride=2))
    assert {f["file"]: f["frames"] for f in m["files"]} == {"a.avi": 4, "b.mp4": 3}


def test_hdf5_stacks_default_key_and_explicit_key(tmp_path):
    h5py = pytest.importorskip("h5py")
    folder = tmp_path / "h5"
    folder.mkdir()
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 4000, (5, 40, 50)).astype(np.uint16)
    vol4 = rng.random((2, 3, 40, 50)).astype(np.float32)
    with h5py.File(folder / "stack.h5", "w") as f:
        f["images"] = stack
        f["labels"] = np.arange(5)  # 1-D: not a frame candidate
    with h5py.File(folder / "two.hdf5", "w") as f:
        f["group/a"] = stack[:2]
        f["group/b"] = vol4
    with h5py.File(folder / "frame.h5", "w") as f:
        f["us"] = stack[0]  # one 2-D frame
    assert decoders.count_frames(str(folder / "stack.h5"), "hdf5") == 5
    assert np.array_equal(decoders.read_frame(str(folder / "stack.h5"), "hdf5", 4), stack[4])
    with pytest.raises(containers.FormatError, match="group/a.*group/b"):  # ambiguous: names both, asks for a key
        decoders.count_frames(str(folder / "two.hdf5"), "hdf5")
    key = decoders.FrameOptions(h5_key="group/b")
    assert decoders.count_frames(str(folder / "two.hdf5"), "hdf5", key) == 6
    assert np.array_equal(decoders.read_frame(str(folder / "two.hdf5"), "hdf5", 4, key), vol4[1, 1])
    with pytest.raises(containers.FormatError, match="no dataset 'nope'"):
        decoders.count_frames(str(folder / "two.hdf5"), "hdf5", decoders.FrameOptions(h5_key="nope"))

    scan = scanning.scan_files(folder)  # two.hdf5 is reported as skipped, with the reason
    assert {e.relpath: e.frames for e in scan.entries} == {"stack.h5": 5, "frame.h5": 1}
    assert [s["file"] for s in scan.skipped] == ["two.hdf5"] and "h5_key" in scan.skipped[0]["reason"]
    m = prepare.prepare([str(folder)], str(tmp_path / "out"), size=32, progress=False)
    assert m["datasets"]["h5"]["frames"] == 6


def test_metaimage_volumes_raw_zraw_and_mha(tmp_path, raw_config):
    folder = tmp_path / "camus"
    folder.mkdir()
    rng = np.random.default_rng(1)
    vol = rng.integers(-500, 1500, (4, 30, 40)).astype("<i2")  # [Z, Y, X]: DimSize 40 30 4
    seq = rng.integers(0, 255, (6, 30, 40)).astype(np.uint8)  # 2-D + t, as CAMUS's sequences
    image = rng.random((30, 40)).astype("<f4")
    write_mhd(folder, "vol", vol)
    write_mhd(folder, "seq", seq, compressed=True, element_type="MET_UCHAR")
    write_mhd(folder, "one", image, element_type="MET_FLOAT", local=True)
    scan = scanning.scan_files(folder)
    assert {e.relpath: (e.kind, e.frames) for e in scan.entries} == {
        "one.mha": ("metaimage", 1), "seq.mhd": ("metaimage", 6), "vol.mhd": ("metaimage", 4)}
    assert scan.unread == {}  # vol.raw / seq.zraw are the headers' data, not unread files
    assert np.array_equal(decoders.read_frame(str(folder / "vol.mhd"), "metaimage", 2), vol[2])
    assert np.array_equal(decoders.read_frame(str(folder / "seq.mhd"), "metaimage", 5), seq[5])
    assert np.array_equal(decoders.read_frame(str(folder / "one.mha"), "metaimage", 0), image)
    m = prepare.prepare([str(folder)], str(tmp_path / "out"), size=32, progress=False)
    assert m["datasets"]["camus"]["frames"] == 11 and m["datasets"]["camus"]["unread"] == {}

    (folder / "vol.raw").write_bytes(b"\0" * 10)  # truncated data: the file is skipped with the reason
    containers._metaimage_array.cache_clear()
    scan = src.FilesSource("camus", scanning.scan_files(folder).entries, raw_config, on_error="raise")
    with pytest.raises(decoders.BadFileError, match="bytes of data"):
        [scan[i] for i in range(len(scan))]
