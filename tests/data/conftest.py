"""Builders of the data tests' inputs (speckle images, image folders of every mode, pydicom's DICOM files, an
UltraBench folder, a mixed input tree), each served as a fixture of the same name."""

import json
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_files

from usjepa_jax.data import preprocess as pp


def dicom_file(name):
    files = get_testdata_files(name)  # local files only (never get_testdata_file: it tries the network)
    assert files, f"pydicom does not ship {name}"
    return files[0]


def speckle(h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.rayleigh(60, (h, w)) + 20, 0, 255).astype(np.uint8)


def frames_of(n, h=48, w=64):
    return [speckle(h, w, seed=k) for k in range(n)]


def write_images(folder):
    """One file per mode / bit depth / format; returns {relative name: frames}."""
    folder.mkdir(parents=True, exist_ok=True)
    g = speckle()
    rgb = np.stack([g, g, g], -1)
    Image.fromarray(g).save(folder / "gray8.png")
    Image.fromarray(g.astype(np.uint16) * 257).save(folder / "gray16.png")  # I;16
    Image.fromarray(rgb).save(folder / "rgb.jpg", quality=95)
    Image.fromarray(np.dstack([rgb, np.full(g.shape, 255, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray(rgb).convert("P").save(folder / "palette.png")
    Image.fromarray(g).save(folder / "gray.bmp")
    Image.fromarray(g > 100).save(folder / "bilevel.png")
    Image.fromarray(g.astype(np.float32) / 255).save(folder / "float.tiff")
    pages = [Image.fromarray(speckle(seed=s)) for s in range(3)]
    pages[0].save(folder / "cine.tiff", save_all=True, append_images=pages[1:])  # multi-page: 3 frames
    (folder / "notes.txt").write_text("not an image: ignored")
    return {"gray8.png": 1, "gray16.png": 1, "rgb.jpg": 1, "rgba.png": 1, "palette.png": 1, "gray.bmp": 1,
            "bilevel.png": 1, "float.tiff": 1, "cine.tiff": 3}


DICOMS = {  # pydicom's own test files: name -> frames
    "examples_ybr_color.dcm": 30,  # YBR_FULL_422, JPEG baseline, multi-frame cine
    "examples_palette.dcm": 1,  # PALETTE COLOR
    "SC_rgb_rle_2frame.dcm": 2,  # RGB, RLE, multi-frame
    "SC_rgb_jpeg_gdcm.dcm": 1,  # RGB, JPEG lossless (process 14)
    "JPEG2000.dcm": 1,  # MONOCHROME2 16-bit, JPEG 2000
    "MR_small_jp2klossless.dcm": 1,  # JPEG 2000 lossless
    "MR_small_jpeg_ls_lossless.dcm": 1,  # JPEG-LS lossless
    "MR_small_RLE.dcm": 1,  # RLE grey 16-bit
    "SC_ybr_full_422_uncompressed.dcm": 1,  # YBR_FULL_422 uncompressed
    "SC_rgb_dcmtk_+eb+cy+n1.dcm": 1,  # YBR_FULL, JPEG baseline
    "MR_small.dcm": 1,  # MONOCHROME2 uncompressed
}


def write_dicoms(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name in DICOMS:
        shutil.copy(dicom_file(name), folder / name)
    ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(folder / "mono1")  # no extension: found by the DICM preamble
    return dict(DICOMS, mono1=1)


def write_ultrabench(root, name="busi_v1", n=12, n_test=4):
    d = root / name
    (d / "images" / "sub").mkdir(parents=True)
    (d / "masks" / "scan" / "sub").mkdir(parents=True)
    records, test = [], []
    for i in range(n + n_test):
        rel = f"sub/img{i:03d}.png"
        Image.fromarray(speckle(40, 40, i)).save(d / "images" / rel)
        mask = np.zeros((40, 40), np.uint8)
        mask[5:35, 8:32] = 255
        Image.fromarray(mask).save(d / "masks" / "scan" / rel)
        if i < n:
            records.append({"image": rel, "label": ["benign", "malignant", "normal"][i % 3]})
        else:
            test.append(rel)
    (d / "train_val.json").write_text(json.dumps(records))
    (d / "test.json").write_text(json.dumps({"images": test}))
    return d


def make_inputs(root):
    imgs = root / "pngs"
    imgs.mkdir(parents=True)
    for i in range(6):
        Image.fromarray(speckle(40, 50, i)).save(imgs / f"{i}.png")
    (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 64)
    dcm = root / "dicoms"
    write_dicoms(dcm)
    nii = root / "nifti"
    nii.mkdir()
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((30, 40, 4)).astype(np.float32), np.eye(4)),
             nii / "vol.nii.gz")
    write_ultrabench(root / "ub", n=5, n_test=2)
    return [str(imgs), str(dcm), str(nii), str(root / "ub" / "busi_v1")]


@pytest.fixture(name="raw_config")
def _raw_config():
    """Preprocessing that keeps a frame as decoded (no inpainting, detection, rescaling or crop)."""
    return pp.PreprocessConfig(inpaint=False, detect_scan_region=False, rescale_percentiles=None,
                               crop_to_scan_region=False)


def _served(builder):
    """A fixture that hands the test ``builder`` itself, under the builder's own name."""
    return pytest.fixture(name=builder.__name__)(lambda: builder)


dicom_file_fixture = _served(dicom_file)
speckle_fixture = _served(speckle)
frames_of_fixture = _served(frames_of)
write_images_fixture = _served(write_images)
write_dicoms_fixture = _served(write_dicoms)
write_ultrabench_fixture = _served(write_ultrabench)
make_inputs_fixture = _served(make_inputs)
