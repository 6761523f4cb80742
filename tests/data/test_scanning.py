"""scanning.py: the UltraBench layout (labels, masks, splits), unreadable files skipped and reported or raised,
unread extensions listed, and a folder without a readable frame fails naming it."""

import json
import logging
import shutil

import pytest

from usjepa_jax.data import decoders, pipeline, prepare, scanning, settings
from usjepa_jax.data import sources as src


def test_ultrabench_layout_labels_masks_and_splits(tmp_path, write_ultrabench, raw_config):
    d = write_ultrabench(tmp_path / "ub")
    scan = scanning.scan_ultrabench(d)
    assert scan.name == "busi_v1" and scan.label_names == ["benign", "malignant", "normal"]
    assert sum(e.split == "test" for e in scan.entries) == 4 and all(e.mask_path for e in scan.entries)
    assert [e.label for e in scan.entries[:4]] == [0, 1, 2, 0]
    source = src.FilesSource(scan.name, scan.entries, raw_config)
    assert source[0]["scan_mask"].sum() == 30 * 24  # the given mask, not a detected one
    c = settings.default_data_config()
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


def test_corrupt_files_are_skipped_and_reported_or_raise(tmp_path, caplog, dicom_file, write_images):
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


def test_unread_extensions_are_listed_and_a_folder_without_frames_fails(tmp_path, capsys, caplog, speckle):
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
