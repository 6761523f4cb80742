"""prepare.py: shards + manifest from mixed inputs, resume after an interruption, training batches from the result."""

import json

import numpy as np
import pytest

from usjepa_jax.data import pipeline, prepare, settings, shards
from usjepa_jax.data import sources as src
from usjepa_jax.masks import MultiBlockMaskSampler, patch_valid_from_scan_mask


def test_prepare_writes_shards_and_manifest_and_resumes(tmp_path, monkeypatch, make_inputs):
    inputs = make_inputs(tmp_path / "in")
    out = tmp_path / "prepared"
    # First run: interrupted after 5 files (shard_size 8: at least one shard completes before).
    real, calls = prepare._process, []

    def interrupting(task):
        calls.append(task[1])
        if len(calls) > 5:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(prepare, "_process", interrupting)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare(inputs, str(out), workers=0, size=32, shard_size=8, progress=False)
    done_first = {f["file"] for r in shards.read_progress(out) if r.get("type") == "shard" for f in r["files"]}
    assert len(done_first) == 5 and not (out / "manifest.json").exists()
    (out / "shard-00042.array_record").write_bytes(b"partial")  # a shard cut by a kill: removed on rerun

    # Rerun: only the remaining files are decoded.
    calls.clear()
    monkeypatch.setattr(prepare, "_process", lambda task: (calls.append(task[1]), real(task))[1])
    m = prepare.prepare(inputs, str(out), workers=0, size=32, shard_size=8, progress=False)
    assert not {c.split("/")[-1] for c in calls} & done_first
    assert not (out / "shard-00042.array_record").exists()

    d = m["datasets"]
    assert d["pngs"]["files"] == 6 and d["pngs"]["frames"] == 6
    assert [s["file"] for s in d["pngs"]["skipped"]] == ["broken.png"] and d["pngs"]["skipped"][0]["reason"]
    assert d["dicoms"]["files"] == 12 and d["dicoms"]["frames"] == 42
    assert d["nifti"]["frames"] == 4
    assert d["busi_v1"]["files"] == 5 and d["busi_v1"]["label_names"] == ["benign", "malignant", "normal"]
    assert m["total"]["frames"] == 6 + 42 + 4 + 5
    assert sum(s["records"] for s in m["shards"]) == m["total"]["frames"]
    assert json.loads((out / "manifest.json").read_text())["total"] == m["total"]
    # The same frames as a clean run (sorted file table: order does not depend on the interruption).
    clean = prepare.prepare(inputs, str(tmp_path / "clean"), workers=0, size=32, shard_size=8, progress=False)
    key = [(f["dataset"], f["file"], f["frames"]) for f in clean["files"]]
    assert key == [(f["dataset"], f["file"], f["frames"]) for f in m["files"]]
    a = shards.PreparedSource("all", shards.PreparedStore([out]).shard_paths, shards.PreparedStore([out]).files)
    b = shards.PreparedSource("all", shards.PreparedStore([tmp_path / "clean"]).shard_paths,
                           shards.PreparedStore([tmp_path / "clean"]).files)
    for i in range(0, len(a), 5):
        assert np.array_equal(a[i]["image"], b[i]["image"]) and a.provenance(i) == b.provenance(i)
    # A third run has nothing left to do; other settings are refused.
    calls.clear()
    prepare.prepare(inputs, str(out), workers=0, size=32, shard_size=8, progress=False)
    assert calls == []
    with pytest.raises(ValueError, match="other settings"):
        prepare.prepare(inputs, str(out), workers=0, size=64, progress=False)


def test_prepare_cli_in_parallel_processes_and_training_batches(tmp_path, capsys, make_inputs):
    inputs = make_inputs(tmp_path / "in")
    out = tmp_path / "prepared"
    args = [a for i in inputs for a in ("--input", i)]
    assert prepare.main([*args, "--output", str(out), "--workers", "2", "--size", "32"]) == 0
    err = capsys.readouterr().err
    assert "frames/s" in err and "ETA" in err and "skipped broken.png" in err
    m = json.loads((out / "manifest.json").read_text())
    assert m["total"]["frames"] == 57 and (out / m["shards"][0]["name"]).exists()

    c = settings.default_data_config()
    c.source, c.paths, c.image_size, c.val_fraction, c.num_val = "prepared", [str(out)], 32, 0.3, 8
    c.cap_per_dataset = 10  # the 30-frame cine is capped per epoch
    train = pipeline.make_source(c, "train", 0)
    assert sorted(train.capped.tolist()) == sorted(min(n, 10) for n in train.sizes.tolist())
    sampler = MultiBlockMaskSampler(grid_size=(4, 4), min_keep=1, target_scale=(0.15, 0.2), min_valid_in_target=1)
    batch = next(iter(pipeline.build_dataset(c, global_batch_size=4, seed=0, mask_sampler=sampler)))
    assert batch["image"].shape == (4, 32, 32, 1) and batch["image"].dtype == np.uint8
    assert batch["scan_mask"].shape == (4, 32, 32) and batch["label"].shape == (4,)
    assert batch["target_idx"].shape[:2] == (4, 4) and batch["context_idx"].shape[0] == 4
    for b in range(4):  # USrc: the real scan mask reached the sampler; valid targets touch the scan region
        valid = patch_valid_from_scan_mask(batch["scan_mask"][b], (4, 4)).reshape(-1)
        assert valid[batch["target_idx"][b][batch["target_valid"][b]]].all()
    val = list(pipeline.build_dataset(c, global_batch_size=2, split="val", seed=0, num_epochs=1, shuffle=False))
    assert val and val[0]["image"].shape == (2, 32, 32, 1) and len(pipeline.make_source(c, "val", 0)) <= 8
    test = pipeline.make_source(c, "test", 0) if any(f["split"] == "test" for f in m["files"]) else None
    assert test is None  # UltraBench test.json files are left out of prepared data by default

    # A folder too small to hold any file out: the val split is empty, and training goes on without validation.
    c.val_fraction = 0.0
    with pytest.raises(src.EmptySplitError, match="no frames in split 'val'"):
        pipeline.make_source(c, "val", 0)
    import ml_collections

    from usjepa_jax import train
    config = ml_collections.ConfigDict({"data": c, "eval_every": 1, "seed": 0, "optim": {"batch_size": 2}})
    assert train.validation_batches(config, sampler) == []
