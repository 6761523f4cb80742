"""Feature metrics (evaluation/metrics.py): speckle invariance, RankMe and collapse monitors, k-NN."""

import numpy as np
import pytest

from usjepa_jax.evaluation import metrics


def _blobs(n, d, classes, rng, sep):
    y = rng.integers(0, classes, n)
    centers = rng.standard_normal((classes, d)) * sep
    return (centers[y] + rng.standard_normal((n, d))).astype(np.float32), y


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
    assert s["scan_mask"].shape == (size, size)
    assert (s["image"][..., 0] > 0).any(axis=(0, 1))[~s["scan_mask"]].sum() == 0


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
