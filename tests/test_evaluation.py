"""Evaluation: probe protocol, few-shot subsets, corruptions, speckle invariance, collapse monitors, end to end."""

import itertools
import json

import numpy as np
import pytest

from usjepa_jax.evaluation import corruptions, metrics
from usjepa_jax.evaluation.probe import (
    ProbeConfig,
    classification_metrics,
    stratified_nested_subsets,
    train_probe,
)

FAST = ProbeConfig(max_epochs=60, patience=10, num_seeds=3)


def _blobs(n, d, classes, rng, sep):
    y = rng.integers(0, classes, n)
    centers = rng.standard_normal((classes, d)) * sep
    return (centers[y] + rng.standard_normal((n, d))).astype(np.float32), y


def test_classification_metrics():
    m = classification_metrics(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 3)
    assert m["accuracy"] == 0.75
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)  # class 2 absent from both: not averaged


def test_probe_separable_and_random():
    rng = np.random.default_rng(0)
    x, y = _blobs(600, 16, 4, rng, sep=6.0)
    probe = train_probe(x[:300], y[:300], x[300:400], y[300:400], 4, FAST)
    good = probe.evaluate(x[400:], y[400:])
    assert good["macro_f1_mean"] > 0.97 and good["accuracy_mean"] > 0.97
    xr = rng.standard_normal((600, 16)).astype(np.float32)
    probe = train_probe(xr[:300], y[:300], xr[300:400], y[300:400], 4, FAST)
    chance = probe.evaluate(xr[400:], y[400:])
    assert chance["balanced_accuracy_mean"] < 0.45  # chance is 0.25
    # Random features: the validation loss stalls at once, so early stopping ends long before max_epochs.
    assert probe.epochs.max() < FAST.max_epochs
    assert np.all(probe.epochs == probe.best_epoch + FAST.patience)
    assert np.isnan(probe.val_loss[0, probe.epochs[0]:]).all() and np.isfinite(probe.val_loss[0, :probe.epochs[0]]).all()


def test_probe_padding_changes_nothing():
    """Sets are padded to shared static sizes (one compilation for many tasks / few-shot fractions); the padding
    takes no part in any step: the same probe comes out at any padded size, and below the batch size too."""
    rng = np.random.default_rng(1)
    x, y = _blobs(200, 8, 3, rng, sep=2.0)
    for n in (150, 20):  # more than one batch per epoch, and fewer examples than the batch size
        a = train_probe(x[:n], y[:n], x[150:], y[150:], 3, FAST, pad_to=(n, 50))
        b = train_probe(x[:n], y[:n], x[150:], y[150:], 3, FAST, pad_to=(512, 128))
        np.testing.assert_allclose(a.params["w"], b.params["w"], rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(a.epochs, b.epochs)
        np.testing.assert_allclose(a.val_loss, b.val_loss, rtol=1e-5)


def test_few_shot_subsets_stratified_and_nested():
    labels = np.repeat(np.arange(5), [100, 200, 50, 300, 10])
    subsets = stratified_nested_subsets(labels, (0.01, 0.05, 0.1, 0.5, 1.0), seed=3)
    fractions = sorted(subsets)
    for small, large in itertools.pairwise(fractions):
        assert set(subsets[small]) <= set(subsets[large])
    assert len(subsets[1.0]) == len(labels)
    counts = np.bincount(labels[subsets[0.1]], minlength=5)
    np.testing.assert_array_equal(counts, [10, 20, 5, 30, 1])
    assert np.all(np.bincount(labels[subsets[0.01]], minlength=5) >= 1)  # every class kept


@pytest.mark.parametrize("name", ["blur", "contrast", "speckle"])
def test_corruptions_identity_and_monotone(name):
    from usjepa_jax.data.synthetic import SimulatorConfig, render

    out = render(1, 2, SimulatorConfig(image_size=64))
    image, mask = out["image"][..., None], out["scan_mask"]
    same = corruptions.corrupt(name, image, mask, 0, np.random.default_rng(0))
    np.testing.assert_array_equal(same, image)
    effects = [np.abs(corruptions.corrupt(name, image, mask, s, np.random.default_rng(0)).astype(float)
                      - image).mean() for s in (1, 2, 3)]
    assert 0 < effects[0] < effects[1] < effects[2], effects


def test_blur_kernel_size():
    impulse = np.zeros((21, 21), np.uint8)
    impulse[10, 10] = 255
    for e in (1, 2, 3):
        support = np.flatnonzero(corruptions.gaussian_blur(impulse, e)[10] > 0)
        assert support.max() - support.min() + 1 <= 2 * int(np.floor(2 * e)) + 1


def test_speckle_invariance_constant_and_oracle():
    from configs import base
    from usjepa_jax.evaluation.data import render_invariance_set
    from usjepa_jax.evaluation.features import pool  # noqa: F401  (import check)

    cfg = base.get_config("smoke")
    s = render_invariance_set(cfg.data, num_anatomies=6, num_speckles=3, seed=0)
    assert s["image"].shape[:2] == (6, 3)
    constant = metrics.speckle_invariance(np.ones((6, 3, 8)))
    assert constant["ratio"] == pytest.approx(1.0) and constant["retrieval"] == pytest.approx(
        constant["chance_retrieval"])
    # An "encoder" given the phantom labels directly: one-hot segmentation per pixel (identical across speckle).
    from usjepa_jax.data.synthetic import SEGMENTATION_NAMES

    codes = np.eye(len(SEGMENTATION_NAMES))
    onehot = codes[s["segmentation"]].reshape(6, 3, -1)
    oracle = metrics.speckle_invariance(onehot)
    assert oracle["within"] == pytest.approx(1.0) and oracle["ratio"] > 1.2 and oracle["retrieval"] == 1.0
    assert oracle["anatomy_variance_fraction"] == pytest.approx(1.0) and constant["anatomy_variance_fraction"] == 0
    pixels = metrics.speckle_invariance(s["image"].reshape(6, 3, -1).astype(float))
    assert pixels["ratio"] < oracle["ratio"]  # raw pixels carry speckle
    # Per patch: 8x8 pixel patches as "tokens"; the phantom labels give 1, constant tokens 0, raw pixels between.
    size = s["image"].shape[2]

    def as_tokens(x):
        g = size // 8
        return x.reshape(6, 3, g, 8, g, 8, -1).transpose(0, 1, 2, 4, 3, 5, 6).reshape(6, 3, g * g, -1)

    oracle_tokens = metrics.speckle_invariance(onehot.reshape(6, 3, -1)[..., :1], as_tokens(codes[s["segmentation"]]))
    pixel_tokens = metrics.speckle_invariance(np.ones((6, 3, 1)), as_tokens(s["image"].astype(float)))
    assert oracle_tokens["patch_anatomy_variance_fraction"] == pytest.approx(1.0)
    # Raw pixels carry some speckle (at 64 px the simulator's anti-aliasing averages most of it, as resizing a
    # clinical frame does, so the anatomy dominates their patch variance).
    assert 0.0 < pixel_tokens["patch_anatomy_variance_fraction"] < 0.999
    assert metrics.speckle_invariance(np.ones((6, 3, 1)), np.ones((6, 3, 4, 2)))["patch_anatomy_variance_fraction"] == 0
    # One acquisition for the whole set: the scan region (geometry) is identical for every anatomy.
    assert s["scan_mask"].shape == (size, size) and (s["image"][..., 0] > 0).any(axis=(0, 1))[~s["scan_mask"]].sum() == 0


def test_rankme_and_collapse():
    rng = np.random.default_rng(0)
    iso = rng.standard_normal((2000, 32))
    assert metrics.rankme(iso) > 0.9 * 32
    rank1 = rng.standard_normal((2000, 1)) * rng.standard_normal((1, 32))
    assert metrics.rankme(rank1) < 1.1
    c = metrics.collapse_metrics(np.concatenate([iso, np.zeros((2000, 4))], 1))
    assert c["dead_fraction"] == pytest.approx(4 / 36) and c["std_min"] == 0.0


def test_knn():
    rng = np.random.default_rng(1)
    x, y = _blobs(400, 8, 3, rng, sep=5.0)
    assert metrics.knn_metrics(x[:300], y[:300], x[300:], y[300:], 3, k=5)["accuracy"] > 0.95


def test_end_to_end_smoke(tmp_path):
    """Train the one-stage smoke config (pixel method), then evaluate its encoder (all evaluators), the same
    encoder as a `teacher`, a random init, and the encoder restored from the step-2 train checkpoint."""
    from configs import mae
    from usjepa_jax import train
    from usjepa_jax.evaluation.entry import evaluate_run
    from usjepa_jax.evaluation.runner import render_tasks

    cfg = mae.get_config("smoke")
    cfg.mesh.data = 1
    train.train_and_evaluate(cfg, tmp_path)
    results = evaluate_run(cfg, tmp_path, encoder="student", checkpoint="latest")
    for key in ("lesion/linear_probe/macro_f1_mean", "lesion/knn/accuracy", "lesion/collapse/rankme",
                "speckle_invariance/ratio", "lesion/robustness/blur/s3/macro_f1_mean",
                "lesion/few_shot/10pct/macro_f1_mean"):
        assert np.isfinite(results[key]), key
    for name in ("masks", "pca_features", "probe_curves", "robustness", "few_shot"):
        assert (tmp_path / "eval" / "student_latest" / "lesion" / f"{name}.png").is_file(), name
    # The other encoders: the cheap monitors only, on one task rendered once for the three of them.
    cfg.evals.evaluators, cfg.evals.tasks = "knn,collapse", "lesion"
    cfg.teacher.checkpoint = str(tmp_path / "encoder")
    lesion = render_tasks(cfg)
    teacher = evaluate_run(cfg, tmp_path, encoder="teacher", data=lesion)
    assert teacher["lesion/knn/accuracy"] == results["lesion/knn/accuracy"]  # the same encoder, loaded as a teacher
    evaluate_run(cfg, tmp_path, encoder="random", data=lesion)
    evaluate_run(cfg, tmp_path, encoder="student", checkpoint="2", data=lesion)
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(saved) == {"student:latest", "teacher", "random", "student:step_2"}
    assert saved["student:step_2"]["content_hash"] != saved["student:latest"]["content_hash"]
    assert saved["student:latest"]["metrics"]["lesion"]["knn/accuracy"] == results["lesion/knn/accuracy"]
