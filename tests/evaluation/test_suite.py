"""The encoders x tasks table (evaluation/suite.py, table.py, ``python -m usjepa_jax.evaluate --encoders
--tasks``) on labelled tasks in three layouts and a simulated task."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, eval_smoke_config, export_random, write_csv, write_folders, write_ultrabench
from usjepa_jax.evaluation import suite, table


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
        cfg = eval_smoke_config()
        again = suite.evaluate_table(cfg, [f"other={exported}"], [f"geo_folders={folders}"], out, log=lambda m: None)
    finally:
        features_lib.FeatureExtractor.__call__ = original
    assert again["other"]["geo_folders"]["linear_probe/macro_f1_mean"] == pytest.approx(
        res["other"]["geo_folders"]["linear_probe/macro_f1_mean"])
