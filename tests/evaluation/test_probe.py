"""The linear probe's protocol (evaluation/probe.py): metrics, separable and random features, padding,
few-shot subsets."""

import itertools

import numpy as np
import pytest

from usjepa_jax.evaluation.probe import ProbeConfig, classification_metrics, stratified_nested_subsets, train_probe


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
    assert np.isnan(probe.val_loss[0, probe.epochs[0]:]).all()
    assert np.isfinite(probe.val_loss[0, :probe.epochs[0]]).all()


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
