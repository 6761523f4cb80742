"""Real labelled tasks (evaluation/labelled.py) and the encoders x tasks table (evaluation/suite.py, table.py,
``python -m usjepa_jax.evaluate --encoders --tasks``), on tasks written here from simulator images whose label is
the probe geometry (linear / sector / curvilinear: a label every encoder, a random one included, can learn)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs import base
from usjepa_jax.data.synthetic import SimulatorConfig, render
from usjepa_jax.evaluation import labelled, suite, table
from usjepa_jax.evaluation.features import (
    FeatureExtractor,
    FeatureStore,
    random_encoder,
)

REPO = Path(__file__).resolve().parents[1]
SIZE = 32


def geometry_images(n, seed=0):
    """``[(image uint8 [64, 64], geometry name)]``, ``n`` of them."""
    cfg = SimulatorConfig(image_size=64, overlay_prob=0.0)
    out = []
    for i in range(n):
        r = render(seed * 10_000 + i, i, cfg)
        out.append((r["image"], r["params"]["geometry"]))
    return out


def write_ultrabench(root, n=90, n_test=30):
    d = root / "geometry_v1"
    (d / "images" / "scans").mkdir(parents=True)
    records = {"train_val": [], "test": []}
    for i, (img, geo) in enumerate(geometry_images(n + n_test, seed=1)):
        rel = f"scans/{i:03d}.png"
        Image.fromarray(img).save(d / "images" / rel)
        records["test" if i >= n else "train_val"].append({"image": rel, "label": geo})
    for split, recs in records.items():
        (d / f"{split}.json").write_text(json.dumps(recs))
    return d


def write_folders(root, n=90):
    for i, (img, geo) in enumerate(geometry_images(n, seed=2)):
        (root / geo).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / geo / f"{i:03d}.png")
    (root / "README.txt").write_text("class folders")  # not a frame: reported as unread, not an error
    return root


def write_csv(root, n=90):
    (root / "img").mkdir(parents=True)
    with open(root / "list.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "group"])
        for i, (img, geo) in enumerate(geometry_images(n, seed=3)):
            Image.fromarray(img).save(root / "img" / f"{i:03d}.png")
            w.writerow([f"img/{i:03d}.png", geo, f"{geo}_patient{i // 6}"])  # ~2 images per patient
    return root / "list.csv"


def smoke_config():
    c = base.get_config("smoke")
    c.evals.evaluators = "knn,linear_probe,few_shot,robustness,speckle_invariance"
    c.evals.robustness.corruptions = "blur,speckle"
    c.evals.few_shot.fractions = (0.5, 1.0)
    c.evals.figures = False
    c.evals.num_train, c.evals.num_val, c.evals.num_test = 40, 20, 20
    c.data.image_size = SIZE
    return c


def export_random(directory, seed):
    from usjepa_jax.encoders import export_encoder

    c = smoke_config()
    enc = random_encoder(c.model, SIZE, seed=seed)
    export_encoder(directory, enc.module, enc.params, mean=0.5, std=0.5, image_size=SIZE)
    return directory


# ------------------------------------------------------------------------------------------------ end to end
def test_cli_table_three_layouts_and_a_simulated_task_two_encoders(tmp_path):
    ub = write_ultrabench(tmp_path / "ub")
    folders = write_folders(tmp_path / "folders")
    listing = write_csv(tmp_path / "csvtask")
    exported = export_random(tmp_path / "other_encoder", seed=7)
    out = tmp_path / "table"
    overrides = ["--config.data.image_size=32", "--config.evals.figures=False",
                 "--config.evals.evaluators=knn,linear_probe,few_shot,robustness,speckle_invariance",
                 "--config.evals.robustness.corruptions=blur,speckle", "--config.evals.few_shot.fractions=(0.5,1.0)",
                 "--config.evals.num_train=40", "--config.evals.num_val=20", "--config.evals.num_test=20"]
    cmd = [sys.executable, "-m", "usjepa_jax.evaluate", "--config=configs/base.py:smoke", *overrides,
           f"--encoders=random,other={exported}", f"--tasks={ub},geo_folders={folders},{listing},lesion",
           f"--out={out}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (out / table.TABLE_MD).read_text()
    assert "| encoder | geometry_v1 | geo_folders | list | lesion |" in md
    assert "| random |" in md and "| other |" in md and "Robustness on list" in md
    assert (out / table.TABLE_PNG).stat().st_size > 1000
    saved = json.loads((out / table.TABLE_JSON).read_text())
    res = saved["results"]
    assert set(res) == {"random", "other"}
    assert set(res["random"]) == {"geometry_v1", "geo_folders", "list", "lesion", "all"}
    for enc in res.values():
        assert "speckle_invariance/anatomy_variance_fraction" in enc.pop("all")  # once, on the simulator
        for task, m in enc.items():
            assert 0 <= m["linear_probe/macro_f1_mean"] <= 1 and "few_shot/50pct/macro_f1_mean" in m
            for c in ("blur", "speckle"):
                assert m[f"robustness/{c}/s0/relative_drop"] == 0.0  # severity 0 = the clean images
    # The geometry is learnable: the probe is well above chance (1/3) on every real layout, for both encoders
    # (measured 0.65-0.75 with a random encoder at these sizes).
    for enc in res.values():
        for task in ("geometry_v1", "geo_folders", "list"):
            assert enc[task]["linear_probe/macro_f1_mean"] > 0.5, (task, enc[task]["linear_probe/macro_f1_mean"])
    assert saved["tasks"]["geometry_v1"]["examples"]["test"] == 30  # UltraBench's test.json is the test split
    assert saved["tasks"]["geo_folders"]["classes"] == ["curvilinear", "linear", "sector"]
    assert "images/s" in proc.stderr  # batched extraction reports its throughput
    assert "1 files not read" in proc.stderr and ".txt x1" in proc.stderr  # the README in the class folders

    # A second call reuses every feature: no extraction at all (the extractor would fail).
    from usjepa_jax.evaluation import features as features_lib

    def fail(*a, **k):
        raise AssertionError("features were extracted again")

    original = features_lib.FeatureExtractor.__call__
    features_lib.FeatureExtractor.__call__ = fail
    try:
        cfg = smoke_config()
        again = suite.evaluate_table(cfg, [f"other={exported}"], [f"geo_folders={folders}"], out, log=lambda m: None)
    finally:
        features_lib.FeatureExtractor.__call__ = original
    assert again["other"]["geo_folders"]["linear_probe/macro_f1_mean"] == pytest.approx(
        res["other"]["geo_folders"]["linear_probe/macro_f1_mean"])


# ------------------------------------------------------------------------------------------------ splits
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
    from data.test_containers import write_video  # a data-test builder; shared: tests/conftest.py

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
    directory = labelled.prepare_task(task, tmp_path / "cache", SIZE, labelled.preprocess_config(None),
                                      progress=False)
    manifest = json.loads((directory / "manifest.json").read_text())
    for row in manifest["files"]:  # every frame of a clip went to its clip's split
        assert row["frames"] == frames[row["file"]] and row["split"] == split_of[row["file"]]
    data = labelled.read_prepared_task(directory, task.class_names)
    for split in ("train", "val", "test"):
        assert len(getattr(data, split)) == sum(frames[f] for f, s in split_of.items() if s == split)


# ------------------------------------------------------------------------------------------------ bad input
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


def test_feature_store_resumes_an_interrupted_extraction(tmp_path):
    c = smoke_config()
    enc = random_encoder(c.model, SIZE, seed=0)
    images = np.stack([img for img, _ in geometry_images(10)])[:, ::2, ::2, None]
    reference = FeatureExtractor(enc, batch_size=4)(images)

    class Interrupting(FeatureExtractor):
        calls = 0

        def __call__(self, x, params=None):
            Interrupting.calls += 1
            if Interrupting.calls == 3:
                raise KeyboardInterrupt
            return super().__call__(x, params)

    store = FeatureStore(tmp_path, Interrupting(enc, batch_size=4), chunk=4)
    with pytest.raises(KeyboardInterrupt):
        store.get("k", images)
    assert json.loads((tmp_path / "k.partial.json").read_text())["done"] == 8
    resumed = FeatureStore(tmp_path, FeatureExtractor(enc, batch_size=4), chunk=4)
    logs = []
    resumed.log = logs.append
    out = resumed.get("k", images)
    assert "resuming at 8/10" in logs[0] and resumed.images == 2
    np.testing.assert_allclose(out, reference, atol=1e-5)
    assert (tmp_path / "k.npy").exists() and not (tmp_path / "k.partial.npy").exists()
