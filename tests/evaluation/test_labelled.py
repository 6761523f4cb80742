"""Real labelled tasks (evaluation/labelled.py), written here from simulator images labelled by their probe
geometry: the validation rule, video frames kept in one split, bad labels named, and segmentation masks."""

import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import LABELLED_SIZE, geometry_images, write_csv, write_video
from usjepa_jax.evaluation import labelled


def test_val_rule_is_seeded_stratified_and_keeps_groups_together(tmp_path):
    listing = write_csv(tmp_path / "csvtask", n=90)
    rule = labelled.SplitRule(val_fraction=0.2, test_fraction=0.25, seed=0)
    spec = labelled.TaskSpec.parse(str(listing))
    a = labelled.scan_task(spec, rule).scan.entries
    assert [e.split for e in a] == [e.split for e in labelled.scan_task(spec, rule).scan.entries]  # seeded
    b = labelled.scan_task(spec, labelled.SplitRule(0.2, 0.25, seed=1)).scan.entries
    assert [e.split for e in a] != [e.split for e in b]
    by_group = {}
    for e in a:
        by_group.setdefault(e.group, set()).add(e.split)
    assert all(len(s) == 1 for s in by_group.values())  # a patient's images never straddle splits
    for c in {e.label for e in a}:  # stratified: each class's patients are split by the fractions
        groups = {e.group: e.split for e in a if e.label == c}
        n = len(groups)
        n_test = sum(s == "test" for s in groups.values())
        n_val = sum(s == "val" for s in groups.values())
        assert n_test == max(1, round(0.25 * n)) and n_val == max(1, round(0.2 * (n - n_test)))


def test_frames_of_one_video_stay_in_one_split(tmp_path):
    root = tmp_path / "cine"
    frames = {}
    for i, (img, geo) in enumerate(geometry_images(18, seed=4)):
        (root / geo).mkdir(parents=True, exist_ok=True)
        n = 3 + i % 3
        write_video(root / geo / f"clip{i:02d}.avi", [np.roll(img, k, axis=1) for k in range(n)])
        frames[f"{geo}/clip{i:02d}.avi"] = n
    task = labelled.scan_task(labelled.TaskSpec.parse(str(root)), labelled.SplitRule(0.2, 0.2, 0))
    split_of = {e.relpath: e.split for e in task.scan.entries}
    assert {e.relpath: e.frames for e in task.scan.entries} == frames
    directory = labelled.prepare_task(task, tmp_path / "cache", LABELLED_SIZE, labelled.preprocess_config(None),
                                      progress=False)
    manifest = json.loads((directory / "manifest.json").read_text())
    for row in manifest["files"]:  # every frame of a clip went to its clip's split
        assert row["frames"] == frames[row["file"]] and row["split"] == split_of[row["file"]]
    data = labelled.read_prepared_task(directory, task.class_names)
    for split in ("train", "val", "test"):
        assert len(getattr(data, split)) == sum(frames[f] for f, s in split_of.items() if s == split)


def test_bad_labels_and_empty_classes_fail_naming_file_and_label(tmp_path):
    listing = write_csv(tmp_path / "t", n=30)
    rows = listing.read_text().splitlines()
    bad = tmp_path / "t" / "bad.csv"
    bad.write_text("\n".join(rows[:5] + ["img/004.png,,patient9"] + rows[6:]) + "\n")
    with pytest.raises(labelled.TaskError, match=r"bad.csv line 6: img/004.png has no usable label"):
        labelled.scan_task(labelled.TaskSpec.parse(str(bad)))
    mixed = tmp_path / "t" / "mixed.csv"
    mixed.write_text("\n".join(rows[:3] + ["img/002.png,3,p"] + rows[4:]) + "\n")
    with pytest.raises(labelled.TaskError, match=r"mix integers \(.*mixed.csv line 4: '3'\) and class names"):
        labelled.scan_task(labelled.TaskSpec.parse(str(mixed)))
    nolabel = tmp_path / "t" / "nolabel.csv"
    nolabel.write_text("file,grade\nimg/000.png,1\n")
    with pytest.raises(labelled.TaskError, match=r"nolabel.csv: no 'label' column"):
        labelled.scan_task(labelled.TaskSpec.parse(str(nolabel)))
    js = tmp_path / "t" / "list.json"
    js.write_text(json.dumps([{"path": "img/000.png", "label": [1, 2]}]))
    with pytest.raises(labelled.TaskError, match=r"list.json item 0: label \[1, 2\] of img/000.png does not parse"):
        labelled.scan_task(labelled.TaskSpec.parse(str(js)))
    # A class with a single example cannot be in train, val and test: named with its file.
    rare = tmp_path / "t" / "rare.csv"
    rare.write_text("path,label\n" + "".join(f"img/{i:03d}.png,{'a' if i % 2 else 'b'}\n" for i in range(20))
                    + "img/020.png,rare\n")
    with pytest.raises(labelled.TaskError, match=r"class 'rare' has no example in split 'val'.*img/020.png"):
        labelled.scan_task(labelled.TaskSpec.parse(str(rare)))
    # Given splits: a class missing from the test folder fails naming the class and the split.
    root = tmp_path / "split_folders"
    for split, classes in (("train", "ab"), ("val", "ab"), ("test", "a")):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for k in range(2):
                Image.fromarray(geometry_images(1)[0][0]).save(root / split / c / f"{k}.png")
    with pytest.raises(labelled.TaskError, match=r"class 'b' has no example in split 'test'"):
        labelled.scan_task(labelled.TaskSpec.parse(str(root)))
    # A folder of only unsupported files fails naming it and what it holds.
    only = tmp_path / "only" / "x"
    only.mkdir(parents=True)
    (only / "a.txt").write_text("x")
    from usjepa_jax.data.scanning import NoFramesError
    with pytest.raises(NoFramesError, match=r"only: no readable frame.*\.txt x1"):
        labelled.scan_task(labelled.TaskSpec.parse(str(tmp_path / "only")))


def test_ultrabench_segmentation_masks_follow_the_image_geometry(tmp_path):
    """An UltraBench segmentation task written as UltraBench writes it (paths relative to the dataset folder,
    ``mask`` and ``scan_mask`` keys, 0/255 masks, a scan region that is cropped): the masks land in the splits'
    segmentation, as classes 0/1, aligned with the preprocessed images; the ``masks/<name>/`` lookup agrees."""
    root = tmp_path / "toy_v1"
    for sub in ("images", "masks/structures", "masks/scan"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    records = {"train": [], "val": [], "test": []}
    for i in range(12):
        image = rng.integers(20, 60, (64, 48)).astype(np.uint8)
        seg = np.zeros((64, 48), np.uint8)
        r, c = rng.integers(12, 36, 2)
        seg[r:r + 16, c - 8:c + 8] = 255
        image[seg > 0] = 220
        scan = np.zeros((64, 48), np.uint8)
        scan[8:56] = 1  # the scan region: rows 8-55, cropped to it and padded square by the preprocessing
        name = f"{i:02d}.png"
        Image.fromarray(image).save(root / "images" / name)
        Image.fromarray(seg).save(root / "masks/structures" / name)
        Image.fromarray(scan * 255).save(root / "masks/scan" / name)
        split = "test" if i >= 8 else "val" if i >= 6 else "train"
        records[split].append({"image": f"images/{name}", "mask": f"masks/structures/{name}",
                               "scan_mask": f"masks/scan/{name}", "patient": i})
    (root / "train_val.json").write_text(json.dumps({"train": records["train"], "val": records["val"]}))
    (root / "test.json").write_text(json.dumps(records["test"]))
    cfg = labelled.default_labelled_config()
    cfg.mask = "mask"
    data = labelled.load_task(str(root), 32, tmp_path / "cache", labelled=cfg, progress=False)
    assert (len(data.train), len(data.val), len(data.test)) == (6, 2, 4)
    for s in (data.train, data.val, data.test):
        assert s.segmentation.shape == (len(s), 32, 32) and set(np.unique(s.segmentation)) == {0, 1}
        bright = s.image[..., 0] > 128
        iou = (bright & (s.segmentation == 1)).sum() / (bright | (s.segmentation == 1)).sum()
        assert iou > 0.8, iou
    cfg.mask = "structures"  # no `structures_mask` key: found in masks/structures/ by the image's name
    again = labelled.load_task(str(root), 32, tmp_path / "cache2", labelled=cfg, progress=False)
    np.testing.assert_array_equal(again.test.segmentation, data.test.segmentation)
