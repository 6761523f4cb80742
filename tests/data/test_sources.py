"""sources.py: a frame that fails to decode after the scan is skipped or raises; the hold-out by file; raw files
feed build_dataset."""

import logging

import numpy as np
import pytest
from PIL import Image

from usjepa_jax.data import decoders, pipeline, scanning, settings
from usjepa_jax.data import sources as src


def test_decode_failure_after_scan_skips_to_next_frame_or_raises(tmp_path, caplog, speckle, raw_config):
    folder = tmp_path / "jpgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(speckle(seed=i)).save(folder / f"{i}.jpg")
    data = (folder / "1.jpg").read_bytes()
    (folder / "1.jpg").write_bytes(data[: len(data) // 3])  # header fine, pixels truncated
    scan = scanning.scan_files(folder)
    assert len(scan.entries) == 3
    skip = src.FilesSource("jpgs", scan.entries, raw_config, on_error="skip")
    with caplog.at_level(logging.WARNING):
        el = skip[1]
    assert "1.jpg" in caplog.text and el["index"] == 1
    assert np.array_equal(el["image"], skip[2]["image"])  # deterministic replacement: the next good frame
    with pytest.raises(decoders.BadFileError, match="1.jpg"):
        src.FilesSource("jpgs", scan.entries, raw_config, on_error="raise")[1]


def test_holdout_is_deterministic_about_five_percent_and_by_file(tmp_path, speckle):
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
    c = settings.default_data_config()
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


def test_raw_files_feed_build_dataset(tmp_path, write_images, write_dicoms):
    write_images(tmp_path / "a")
    write_dicoms(tmp_path / "b")
    c = settings.default_data_config()
    c.source, c.paths, c.image_size, c.val_fraction = "files", [str(tmp_path / "a"), str(tmp_path / "b")], 32, 0.0
    batch = next(iter(pipeline.build_dataset(c, global_batch_size=6, seed=0)))
    assert batch["image"].shape == (6, 32, 32, 1) and batch["scan_mask"].shape == (6, 32, 32)
    assert batch["label"].dtype == np.int32
