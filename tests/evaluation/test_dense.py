"""The dense linear probe (evaluation/dense.py): the oracle read perfectly, segmentation metrics and upsampling."""

import numpy as np
import pytest

from usjepa_jax.evaluation.dense import patch_targets, segmentation_metrics, train_dense_probe, upsample_patches
from usjepa_jax.evaluation.probe import ProbeConfig


FAST = ProbeConfig(lr=1e-2, weight_decay=1e-3, batch_size=64, max_epochs=40, patience=8, num_seeds=2)


def test_dense_probe_reads_the_oracle_perfectly():
    """Features = the oracle's own per-patch tissue codes (one-hot, the map is constant on patches): mIoU 1."""
    rng = np.random.default_rng(0)
    n, grid, patch, classes = 120, 4, 4, 3
    seg = np.repeat(np.repeat(rng.integers(0, classes, (n, grid, grid)), patch, 1), patch, 2).astype(np.uint8)
    tokens = patch_targets(seg, patch, classes)
    probe = train_dense_probe(tokens[:60], seg[:60], tokens[60:90], seg[60:90], classes, patch, FAST)
    m = probe.evaluate(tokens[90:], seg[90:])
    assert m["miou_mean"] == 1.0 and m["dice_mean"] == 1.0 and m["pixel_accuracy_mean"] == 1.0
    const = np.zeros_like(tokens)
    flat = train_dense_probe(const[:60], seg[:60], const[60:90], seg[60:90], classes, patch, FAST)
    assert flat.evaluate(const[90:], seg[90:])["miou_mean"] < 0.3


def test_segmentation_metrics_and_upsampling():
    truth = np.array([[0, 0], [1, 1]])
    pred = np.array([[0, 1], [1, 1]])
    m = segmentation_metrics(truth, pred, 4)  # classes 2 and 3 absent from both: not averaged
    assert m["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["dice"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert m["pixel_accuracy"] == 0.75
    np.testing.assert_array_equal(upsample_patches(np.array([[1, 2, 3, 4]]), 2)[0],
                                  [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
