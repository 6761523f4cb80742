"""Cine video, HDF5 and MetaImage inputs (data/containers.py), DICOM ultrasound regions, and nothing ignored silently:
each container written here by its own library (or by hand for MetaImage's text header) prepares into the right
number of frames; unread extensions are listed; a folder without a readable frame fails naming it."""

import json
import zlib

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from test_sources import dicom_file, speckle

from usjepa_jax.data import containers, decoders, prepare, scanning
from usjepa_jax.data import preprocess as pp
from usjepa_jax.data import sources as src

RAW = pp.PreprocessConfig(inpaint=False, detect_scan_region=False, rescale_percentiles=None,
                          crop_to_scan_region=False)


def frames_of(n, h=48, w=64):
    return [speckle(h, w, seed=k) for k in range(n)]


def write_video(path, frames, codec="ffv1", fps=10):
    av = pytest.importorskip("av")
    h, w = frames[0].shape
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p" if codec != "ffv1" else "gray"
        for f in frames:
            frame = av.VideoFrame.from_ndarray(f, format="gray")
            for packet in stream.encode(frame.reformat(format=stream.pix_fmt)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


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


# ------------------------------------------------------------------------------------------------ video
def test_video_prepares_into_every_frame_or_a_stride(tmp_path):
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


# ------------------------------------------------------------------------------------------------ HDF5
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


# ------------------------------------------------------------------------------------------------ MetaImage
def test_metaimage_volumes_raw_zraw_and_mha(tmp_path):
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
    scan = src.FilesSource("camus", scanning.scan_files(folder).entries, RAW, on_error="raise")
    with pytest.raises(decoders.BadFileError, match="bytes of data"):
        [scan[i] for i in range(len(scan))]


# ------------------------------------------------------------------------------------------------ DICOM regions
def test_dicom_ultrasound_regions_bound_the_scan_region(tmp_path):
    ds = pydicom.dcmread(dicom_file("MR_small.dcm"))  # 64 x 64
    tissue, other = Dataset(), Dataset()
    for r, (x0, y0, x1, y1, fmt) in ((tissue, (10, 5, 49, 54, 1)), (other, (0, 56, 63, 63, 3))):
        r.RegionSpatialFormat, r.RegionDataType = fmt, 1
        r.RegionLocationMinX0, r.RegionLocationMinY0, r.RegionLocationMaxX1, r.RegionLocationMaxY1 = x0, y0, x1, y1
    ds.SequenceOfUltrasoundRegions = Sequence([tissue, other])
    ds.save_as(tmp_path / "us.dcm")
    region = decoders.file_region(str(tmp_path / "us.dcm"), "dicom")
    expected = np.zeros((64, 64), bool)
    expected[5:55, 10:50] = True  # the tissue region only (the other one is a Doppler/graphics region)
    assert np.array_equal(region, expected)
    assert decoders.file_region(dicom_file("MR_small.dcm"), "dicom") is None
    frame = decoders.read_frame(str(tmp_path / "us.dcm"), "dicom", 0)
    _, mask = pp.preprocess_frame(frame, RAW, region=region)
    assert np.array_equal(mask, expected)
    _, detected = pp.preprocess_frame(frame, pp.PreprocessConfig(crop_to_scan_region=False), region=region)
    assert detected.any() and not (detected & ~expected).any()  # detection stays inside the bound
    m = prepare.prepare([str(tmp_path)], str(tmp_path / "out"), size=32, progress=False,
                        preprocess=pp.PreprocessConfig(detect_scan_region=False))
    assert m["total"]["frames"] == 1


# ------------------------------------------------------------------------------------------------ nothing silent
def test_unread_extensions_are_listed_and_a_folder_without_frames_fails(tmp_path, capsys, caplog):
    from PIL import Image

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(speckle()).save(mixed / "a.png")
    for name in ("notes.txt", "readme.txt", "labels.csv", "scan.xyz", "NOEXT"):
        (mixed / name).write_text("x")
    m = prepare.prepare([str(mixed)], str(tmp_path / "out"), size=32, progress=False)
    assert m["datasets"]["mixed"]["unread"] == {".txt": 2, ".csv": 1, ".xyz": 1, "(none)": 1}
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["datasets"]["mixed"]["unread"][".txt"] == 2
    assert "5 files not read" in caplog.text and ".txt x2" in caplog.text

    only = tmp_path / "only_unsupported"
    only.mkdir()
    for name in ("a.txt", "b.txt", "c.json", "clip.xyz"):
        (only / name).write_text("x")
    with pytest.raises(scanning.NoFramesError, match=r"only_unsupported: no readable frame.*\.txt x2.*\.json x1"):
        prepare.prepare([str(only)], str(tmp_path / "out2"), size=32, progress=False)
    assert prepare.main(["--input", str(only), "--output", str(tmp_path / "out3"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "only_unsupported: no readable frame" in err and ".txt x2" in err and "video: .avi" in err
    # Training from such a folder fails the same way, before any compute.
    from ml_collections import ConfigDict
    with pytest.raises(scanning.NoFramesError, match="only_unsupported"):
        src.dataset_sources(ConfigDict({"source": "files", "paths": [str(only)], "image_size": 32}), "train")
