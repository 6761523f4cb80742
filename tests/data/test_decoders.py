"""decoders.py: every image mode and bit depth, DICOM (pydicom's own files) and NIfTI read frame by frame;
DICOM ultrasound regions bound the scan region."""

import pickle

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from usjepa_jax.data import decoders, prepare, scanning
from usjepa_jax.data import preprocess as pp
from usjepa_jax.data import sources as src


def test_image_folder_every_mode_and_depth(tmp_path, speckle, write_images, raw_config):
    expected = write_images(tmp_path / "imgs")
    scan = scanning.scan_files(tmp_path / "imgs")
    assert scan.name == "imgs" and not scan.skipped
    assert {e.relpath: e.frames for e in scan.entries} == expected
    source = src.FilesSource(scan.name, scan.entries, pp.PreprocessConfig(size=32))
    assert len(source) == sum(expected.values())
    source = pickle.loads(pickle.dumps(source))  # grain workers get a pickled copy
    for i in range(len(source)):
        el = source[i]
        assert el["image"].shape == (32, 32) and el["image"].dtype == np.uint8
        assert el["scan_mask"].shape == (32, 32) and el["scan_mask"].dtype == bool
        assert el["label"] == -1 and el["index"] == i
    assert [source.provenance(i) for i in range(len(source)) if source.provenance(i)["file"] == "cine.tiff"] == [
        {"dataset": "imgs", "file": "cine.tiff", "frame": k} for k in range(3)]
    # 8-bit is kept as is; 16-bit is mapped min..max to 0..255 (the percentile rescaling then sets the contrast).
    g8, g16 = (pp.preprocess_frame(decoders.read_frame(str(tmp_path / "imgs" / n), "image", 0), raw_config)[0]
               for n in ("gray8.png", "gray16.png"))
    g = speckle().astype(float)
    assert np.array_equal(g8, speckle())
    assert np.abs(g16 - (g - g.min()) * 255 / (g.max() - g.min())).max() <= 1
    assert decoders.read_frame(str(tmp_path / "imgs" / "palette.png"), "image", 0).shape == (48, 64, 3)


def test_dicom_formats_frames_and_colour(tmp_path, dicom_file, write_dicoms, raw_config):
    expected = write_dicoms(tmp_path / "dcm")
    scan = scanning.scan_files(tmp_path / "dcm")
    assert not scan.skipped
    assert {e.relpath: e.frames for e in scan.entries} == expected
    source = src.FilesSource("dcm", scan.entries, pp.PreprocessConfig(size=24), on_error="raise")
    assert len(source) == sum(expected.values()) == 42
    for i in range(len(source)):  # every frame decodes (every transfer syntax above)
        el = source[i]
        assert el["image"].shape == (24, 24) and el["image"].dtype == np.uint8 and el["scan_mask"].any()
    d = str(tmp_path / "dcm")
    # Cine frames are distinct examples; YBR is converted to RGB; palette goes through its LUT.
    f0, f9 = (decoders.read_frame(f"{d}/examples_ybr_color.dcm", "dicom", k) for k in (0, 9))
    assert f0.shape == (240, 320, 3) and not np.array_equal(f0, f9)
    assert np.array_equal(f9, list(decoders.iter_frames(f"{d}/examples_ybr_color.dcm", "dicom"))[9])
    ybr = decoders.read_frame(f"{d}/SC_rgb_dcmtk_+eb+cy+n1.dcm", "dicom", 0).astype(int)
    rgb = decoders.read_frame(str(dicom_file("SC_rgb_dcmtk_+eb+cr.dcm")), "dicom", 0).astype(int)
    assert np.abs(ybr - rgb).mean() < 5  # the same picture, one stored as YBR_FULL
    assert decoders.read_frame(f"{d}/examples_palette.dcm", "dicom", 0).shape == (350, 800, 3)
    # MONOCHROME1 is the inverse of MONOCHROME2.
    m1 = pp.preprocess_frame(decoders.read_frame(f"{d}/mono1", "dicom", 0), raw_config)[0].astype(int)
    m2 = pp.preprocess_frame(decoders.read_frame(f"{d}/MR_small.dcm", "dicom", 0), raw_config)[0].astype(int)
    assert np.abs(m1 - (255 - m2)).max() <= 1


def test_nifti_volumes_and_cine(tmp_path):
    folder = tmp_path / "nii"
    folder.mkdir()
    rng = np.random.default_rng(0)
    vol = rng.random((16, 20, 5)).astype(np.float32)
    cine = rng.integers(0, 255, (16, 20, 1, 7)).astype(np.uint8)  # 2-D + t
    vol4 = rng.random((8, 9, 3, 2)).astype(np.float32)
    for name, arr in (("vol.nii.gz", vol), ("cine.nii", cine), ("vol4.nii.gz", vol4)):
        nib.save(nib.Nifti1Image(arr, np.eye(4)), folder / name)
    scan = scanning.scan_files(folder)
    assert {e.relpath: e.frames for e in scan.entries} == {"vol.nii.gz": 5, "cine.nii": 7, "vol4.nii.gz": 6}
    assert np.allclose(decoders.read_frame(str(folder / "vol.nii.gz"), "nifti", 3), vol[:, :, 3])
    assert np.array_equal(decoders.read_frame(str(folder / "cine.nii"), "nifti", 6), cine[:, :, 0, 6])
    assert np.allclose(decoders.read_frame(str(folder / "vol4.nii.gz"), "nifti", 4), vol4[:, :, 1, 1])
    assert decoders.count_frames(str(folder / "vol.nii.gz"), "nifti", decoders.FrameOptions(nifti_axis=0)) == 16
    axis0 = decoders.FrameOptions(nifti_axis=0)
    assert np.allclose(decoders.read_frame(str(folder / "vol.nii.gz"), "nifti", 2, axis0), vol[2])
    frames = list(decoders.iter_frames(str(folder / "vol4.nii.gz"), "nifti"))
    assert len(frames) == 6 and np.allclose(frames[4], vol4[:, :, 1, 1])


def test_dicom_ultrasound_regions_bound_the_scan_region(tmp_path, dicom_file, raw_config):
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
    _, mask = pp.preprocess_frame(frame, raw_config, region=region)
    assert np.array_equal(mask, expected)
    _, detected = pp.preprocess_frame(frame, pp.PreprocessConfig(crop_to_scan_region=False), region=region)
    assert detected.any() and not (detected & ~expected).any()  # detection stays inside the bound
    m = prepare.prepare([str(tmp_path)], str(tmp_path / "out"), size=32, progress=False,
                        preprocess=pp.PreprocessConfig(detect_scan_region=False))
    assert m["total"]["frames"] == 1
