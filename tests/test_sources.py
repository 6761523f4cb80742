"""Real-data sources, preprocessing, mixture and hold-out, on small fixtures made here (plus pydicom's own files)."""

import json
import logging
import pickle
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw
from pydicom.data import get_testdata_files

from usjepa_jax.data import decoders, mixture, pipeline, scanning
from usjepa_jax.data import preprocess as pp
from usjepa_jax.data import sources as src
from usjepa_jax.data.synthetic import SimulatorConfig, render

RAW = pp.PreprocessConfig(inpaint=False, detect_scan_region=False, rescale_percentiles=None,
                          crop_to_scan_region=False)


def dicom_file(name):
    files = get_testdata_files(name)  # local files only (never get_testdata_file: it tries the network)
    assert files, f"pydicom does not ship {name}"
    return files[0]


def speckle(h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.rayleigh(60, (h, w)) + 20, 0, 255).astype(np.uint8)


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


# ------------------------------------------------------------------------------------------------ images
def test_image_folder_every_mode_and_depth(tmp_path):
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
    g8, g16 = (pp.preprocess_frame(decoders.read_frame(str(tmp_path / "imgs" / n), "image", 0), RAW)[0]
               for n in ("gray8.png", "gray16.png"))
    g = speckle().astype(float)
    assert np.array_equal(g8, speckle())
    assert np.abs(g16 - (g - g.min()) * 255 / (g.max() - g.min())).max() <= 1
    assert decoders.read_frame(str(tmp_path / "imgs" / "palette.png"), "image", 0).shape == (48, 64, 3)


# ------------------------------------------------------------------------------------------------ DICOM
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


def test_dicom_formats_frames_and_colour(tmp_path):
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
    m1 = pp.preprocess_frame(decoders.read_frame(f"{d}/mono1", "dicom", 0), RAW)[0].astype(int)
    m2 = pp.preprocess_frame(decoders.read_frame(f"{d}/MR_small.dcm", "dicom", 0), RAW)[0].astype(int)
    assert np.abs(m1 - (255 - m2)).max() <= 1


# ------------------------------------------------------------------------------------------------ NIfTI
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


# ------------------------------------------------------------------------------------------------ UltraBench
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


def test_ultrabench_layout_labels_masks_and_splits(tmp_path):
    d = write_ultrabench(tmp_path / "ub")
    scan = scanning.scan_ultrabench(d)
    assert scan.name == "busi_v1" and scan.label_names == ["benign", "malignant", "normal"]
    assert sum(e.split == "test" for e in scan.entries) == 4 and all(e.mask_path for e in scan.entries)
    assert [e.label for e in scan.entries[:4]] == [0, 1, 2, 0]
    source = src.FilesSource(scan.name, scan.entries, RAW)
    assert source[0]["scan_mask"].sum() == 30 * 24  # the given mask, not a detected one
    c = pipeline.default_data_config()
    c.source, c.paths, c.image_size, c.val_fraction = "ultrabench", [str(tmp_path / "ub")], 32, 0.3
    files = {}
    for split in ("train", "val", "test"):
        s = pipeline.make_source(c, split, 0)
        files[split] = {s.provenance(i)["file"] for i in range(len(s))}
    assert files["test"] == {f"sub/img{i:03d}.png" for i in range(12, 16)}
    assert files["train"] | files["val"] == {f"sub/img{i:03d}.png" for i in range(12)}
    assert not files["train"] & files["val"] and files["val"]
    # Other JSON shapes: a plain list of names, and sub-split dicts.
    def pairs(obj):
        return [(r["path"], r["label"], r["split"]) for r in scanning.json_records(obj, "x")]

    assert pairs(["a.png", "b.png"]) == [("a.png", None, None), ("b.png", None, None)]
    assert pairs({"train": [{"file": "a.png", "class": 1}], "val": ["b.png"]}) == [
        ("a.png", 1, "train"), ("b.png", None, "val")]
    assert scanning.json_records([{"path": "c.avi", "label": "x", "split": "test", "patient": "p7"}], "x") == [
        {"path": "c.avi", "label": "x", "split": "test", "group": "p7"}]


# ------------------------------------------------------------------------------------------------ bad input
def test_corrupt_files_are_skipped_and_reported_or_raise(tmp_path, caplog):
    folder = tmp_path / "mixed"
    write_images(folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    shutil.copy(dicom_file("MR_small.dcm"), folder / "cut.dcm")
    (folder / "cut.dcm").write_bytes((folder / "cut.dcm").read_bytes()[:200])
    with caplog.at_level(logging.WARNING):
        scan = scanning.scan_files(folder, on_error="skip")
    assert sorted(s["file"] for s in scan.skipped) == ["broken.png", "cut.dcm"]
    assert all(s["reason"] for s in scan.skipped)
    assert "broken.png" in caplog.text and "cut.dcm" in caplog.text
    assert len(scan.entries) == 9  # nothing else lost
    with pytest.raises(decoders.BadFileError, match="broken.png"):
        scanning.scan_files(folder, on_error="raise")


def test_decode_failure_after_scan_skips_to_next_frame_or_raises(tmp_path, caplog):
    folder = tmp_path / "jpgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(speckle(seed=i)).save(folder / f"{i}.jpg")
    data = (folder / "1.jpg").read_bytes()
    (folder / "1.jpg").write_bytes(data[: len(data) // 3])  # header fine, pixels truncated
    scan = scanning.scan_files(folder)
    assert len(scan.entries) == 3
    skip = src.FilesSource("jpgs", scan.entries, RAW, on_error="skip")
    with caplog.at_level(logging.WARNING):
        el = skip[1]
    assert "1.jpg" in caplog.text and el["index"] == 1
    assert np.array_equal(el["image"], skip[2]["image"])  # deterministic replacement: the next good frame
    with pytest.raises(decoders.BadFileError, match="1.jpg"):
        src.FilesSource("jpgs", scan.entries, RAW, on_error="raise")[1]


# ------------------------------------------------------------------------------------------------ preprocessing
def fan_with_ui(seed):
    # A fan (sector or curvilinear) of liver without calcifications: no shadow cuts the fan's outline.
    fan = SimulatorConfig(image_size=192, geometries=("sector", "curvilinear"), organs=("liver",),
                          class_probs=(0.25, 0.25, 0.25, 0.25, 0.0))
    out = render(seed, seed, fan)
    img = np.zeros((240, 300), np.uint8)
    img[30:222, 60:252] = out["image"]
    truth = np.zeros(img.shape, bool)
    truth[30:222, 60:252] = out["scan_mask"]
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    draw.text((4, 4), "LOGIQ E9  MI 0.9  TIs 0.4  L12-5", fill=255)
    draw.text((255, 60), "D 6.0", fill=230)
    draw.text((4, 225), "FR 32Hz  G 55", fill=200)
    draw.line([(262, 90), (262, 210)], fill=255)  # depth ruler
    return np.asarray(pil), truth


@pytest.mark.parametrize("seed", [0, 1, 3, 5])
def test_scan_region_detection_on_synthetic_fan_with_ui_text(seed):
    image, truth = fan_with_ui(seed)
    found = pp.detect_scan_region(image)
    assert (found & truth).sum() / (found | truth).sum() > 0.9


def test_percentile_rescaling_inside_the_scan_region():
    rng = np.random.default_rng(0)
    gray = rng.integers(60, 160, (64, 64)).astype(np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[8:56, 8:56] = True
    gray[~mask] = 250  # bright UI outside must not set the range
    out = pp.rescale_intensity(gray, mask, 2, 98)
    inside = out[mask]
    assert (out[~mask] == 0).all()
    assert np.mean(inside == 0) == pytest.approx(0.02, abs=0.015)
    assert np.mean(inside == 255) == pytest.approx(0.02, abs=0.015)
    lo, hi = np.percentile(gray[mask], [2, 98])
    mid = gray[mask] == int((lo + hi) // 2)
    assert abs(inside[mid].mean() - 127.5) < 4


def test_inpainting_removes_coloured_marks():
    gray = np.clip(np.add.outer(np.arange(96), np.arange(96)) * 0.8 + 20, 0, 255).astype(np.uint8)
    rgb = np.stack([gray] * 3, -1)
    marked = rgb.copy()
    marked[40:42, 10:80] = (255, 255, 0)  # a yellow caliper line: 1.5% of the image
    marked[60:66, 30:36] = (0, 200, 255)  # a cyan marker
    marks = pp.color_mask(marked)
    assert 0 < marks.mean() < 0.05
    out, _ = pp.preprocess_frame(marked, RAW.__class__(**{**RAW.__dict__, "inpaint": True}))
    assert np.abs(out.astype(int) - gray)[marks].max() <= 6  # marks gone, the gradient restored
    assert np.array_equal(out[~marks], gray[~marks])
    kept, _ = pp.preprocess_frame(marked, RAW)  # switch off: the marks stay (as grey)
    assert np.abs(kept.astype(int) - gray)[marks].max() > 50
    big = rgb.copy()
    big[:20] = (255, 0, 0)  # over 5% coloured: converted only, not inpainted
    out_big, _ = pp.preprocess_frame(big, RAW.__class__(**{**RAW.__dict__, "inpaint": True}))
    assert np.array_equal(out_big[:20], pp.luma(big)[:20])


def test_full_preprocessing_crops_to_a_square_of_the_scan_region():
    image, _ = fan_with_ui(0)
    out, mask = pp.preprocess_frame(np.stack([image] * 3, -1), pp.PreprocessConfig(size=64))
    assert out.shape == mask.shape == (64, 64) and out.dtype == np.uint8
    assert (out[~mask] == 0).all() and out[mask].max() >= 240  # the full range, up to the resize's averaging
    assert mask[:, 32].any() and mask[32].any()


# ------------------------------------------------------------------------------------------------ mixture
class Range:
    def __init__(self, name, n):
        self.name, self.n = name, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": np.zeros((2, 2), np.uint8), "scan_mask": np.ones((2, 2), bool), "label": np.int32(-1),
                "index": np.int32(i), "dataset": self.name, "local": i}

    def provenance(self, i):
        return {"dataset": self.name, "file": f"{i}", "frame": 0}


def test_mixture_probabilities_and_cap():
    sizes = [10, 100, 1000]
    assert np.allclose(mixture.mixture_weights(sizes, cap=50), np.array([10, 50, 50]) / 110)
    assert np.allclose(mixture.mixture_weights(sizes, cap=None), np.array(sizes) / 1110)
    assert np.allclose(mixture.mixture_weights([10, 200_000]), np.array([10, 50_000]) / 50_010)  # N_t default
    mix = mixture.MixtureSource([Range(f"d{i}", n) for i, n in enumerate(sizes)], cap=50, epochs=20, seed=1)
    assert mix.epoch_length == 110 and len(mix) == 2200
    per_epoch = [[mix[e * 110 + k]["dataset"] for k in range(110)] for e in range(20)]
    for names in per_epoch:
        assert [names.count(f"d{i}") for i in range(3)] == [10, 50, 50]
    # A capped dataset: distinct frames within an epoch, fresh subsets across epochs, all frames over 20 epochs.
    seen = [[mix[e * 110 + 60 + k]["local"] for k in range(50)] for e in range(20)]
    assert all(len(set(s)) == 50 for s in seen) and set(seen[0]) != set(seen[1])
    assert set().union(*map(set, seen)) == set(range(1000))
    again = pickle.loads(pickle.dumps(mix))
    assert [again[k]["local"] for k in range(0, 2200, 37)] == [mix[k]["local"] for k in range(0, 2200, 37)]
    assert mix[1234]["index"] == 1234 and mix.provenance(0)["dataset"] == "d0"


# ------------------------------------------------------------------------------------------------ hold-out
def test_holdout_is_deterministic_about_five_percent_and_by_file(tmp_path):
    keys = [f"scan_{i}.dcm" for i in range(4000)]
    held = [src.is_held_out("ds", k, 0.05) for k in keys]
    assert held == [src.is_held_out("ds", k, 0.05) for k in keys]
    assert 0.04 < np.mean(held) < 0.06
    # Frames of one cine loop never straddle splits.
    folder = tmp_path / "loops"
    folder.mkdir()
    for i in range(30):
        pages = [Image.fromarray(speckle(16, 16, 100 * i + s)) for s in range(4)]
        pages[0].save(folder / f"loop{i:02d}.tiff", save_all=True, append_images=pages[1:])
    c = pipeline.default_data_config()
    c.source, c.paths, c.image_size, c.val_fraction = "files", [str(folder)], 16, 0.2
    c.preprocess.detect_scan_region = False
    frames = {}
    for split in ("train", "val"):
        s = pipeline.make_source(c, split, 0)
        frames[split] = [(s.provenance(i)["file"], s.provenance(i)["frame"]) for i in range(len(s))]
    train_files, val_files = {f for f, _ in frames["train"]}, {f for f, _ in frames["val"]}
    assert val_files and not train_files & val_files and len(train_files | val_files) == 30
    assert len(frames["train"]) == 4 * len(train_files) and len(frames["val"]) == 4 * len(val_files)
    # Adding files never moves an existing file between splits.
    for i in range(30, 40):
        Image.fromarray(speckle(16, 16, i)).save(folder / f"extra{i}.png")
    val_source = pipeline.make_source(c, "val", 0)
    val2 = {val_source.provenance(i)["file"] for i in range(len(val_source))}
    assert val_files <= val2


def test_raw_files_feed_build_dataset(tmp_path):
    write_images(tmp_path / "a")
    write_dicoms(tmp_path / "b")
    c = pipeline.default_data_config()
    c.source, c.paths, c.image_size, c.val_fraction = "files", [str(tmp_path / "a"), str(tmp_path / "b")], 32, 0.0
    batch = next(iter(pipeline.build_dataset(c, global_batch_size=6, seed=0)))
    assert batch["image"].shape == (6, 32, 32, 1) and batch["scan_mask"].shape == (6, 32, 32)
    assert batch["label"].dtype == np.int32
