"""Probes that read patch tokens: the attentive probe (attentive.py) and the dense linear probe (dense.py), and
the segmentation masks of real labelled tasks (labelled.py) that the dense probe reads."""

import json

import numpy as np
import pytest

from usjepa_jax.evaluation.attentive import AttentiveHead, normalize_tokens, train_attentive_probe
from usjepa_jax.evaluation.dense import patch_targets, segmentation_metrics, train_dense_probe, upsample_patches
from usjepa_jax.evaluation.probe import ProbeConfig, train_probe

FAST = ProbeConfig(lr=1e-2, weight_decay=1e-3, batch_size=64, max_epochs=40, patience=8, num_seeds=2)


def one_position_tokens(n, classes, copies, rng):
    """Token sets in which only one position holds the label: every set holds each class's code ``copies``
    times in a random order, and one token, at a random position, carries a flag; the label is that token's code.
    Any pooling over positions (mean, max) sees the same content for every label."""
    t = classes * copies
    codes = np.tile(np.arange(classes), copies)[np.argsort(rng.random((n, t)), axis=1)]
    flagged = rng.integers(0, t, n)
    x = np.zeros((n, t, classes + 1), np.float32)
    x[np.arange(n)[:, None], np.arange(t)[None], codes] = 1
    x[np.arange(n), flagged, classes] = 1
    return x + 0.05 * rng.standard_normal(x.shape).astype(np.float32), codes[np.arange(n), flagged]


def test_attentive_probe_finds_the_one_position_mean_pooling_cannot():
    rng = np.random.default_rng(0)
    x, y = one_position_tokens(700, 4, 2, rng)
    tr, va, te = slice(0, 400), slice(400, 500), slice(500, None)
    head = AttentiveHead(num_heads=1)
    attentive = train_attentive_probe(x[tr], y[tr], x[va], y[va], 4, FAST, head).evaluate(x[te], y[te])
    assert attentive["macro_f1_mean"] > 0.95
    pooled = x.mean(1)
    mean_pooled = train_probe(pooled[tr], y[tr], pooled[va], y[va], 4, FAST).evaluate(pooled[te], y[te])
    assert mean_pooled["balanced_accuracy_mean"] < 0.35  # chance 0.25
    # A constant encoder: nothing to attend to, the probe stays at chance (same shapes: no new compilation).
    const = np.ones_like(x)
    flat = train_attentive_probe(const[tr], y[tr], const[va], y[va], 4, FAST, head).evaluate(const[te], y[te])
    assert flat["balanced_accuracy_mean"] == pytest.approx(0.25)


def test_attentive_head_is_standard_cross_attention():
    """The folded computation (keys and values never projected per token, the first LayerNorm's normalisation
    applied once to the data) equals cross-attention written out."""
    import jax
    import jax.numpy as jnp

    head = AttentiveHead(num_heads=2)
    rng = np.random.default_rng(0)
    params = jax.jit(head.init, static_argnums=(1, 2))(jax.random.key(0), (5, 8), 3)
    params = jax.tree.map(lambda p: np.asarray(p) + 0.1 * rng.standard_normal(p.shape).astype(np.float32), params)
    x = rng.standard_normal((4, 5, 8)).astype(np.float32)

    def layer_norm(z, p):
        return (z - z.mean(-1, keepdims=True)) / jnp.sqrt(z.var(-1, keepdims=True) + 1e-6) * p["scale"] + p["bias"]

    def reference(params, x):  # one query, two heads of width 4, keys and values projected token by token
        kv = layer_norm(x, params["norm1"])
        q = (params["query"] @ params["wq"] + params["bq"]).reshape(2, 4)
        k = (kv @ params["wk"]).reshape(4, 5, 2, 4)
        v = (kv @ params["wv"] + params["bv"]).reshape(4, 5, 2, 4)
        a = jax.nn.softmax(jnp.einsum("he,bthe->bth", q, k) / 2.0, axis=1)
        y = params["query"] + jnp.einsum("bth,bthe->bhe", a, v).reshape(4, 8) @ params["wo"] + params["bo"]
        hidden = jax.nn.gelu(layer_norm(y, params["norm2"]) @ params["fc1"] + params["b1"], approximate=False)
        y = y + hidden @ params["fc2"] + params["b2"]
        return y @ params["head_w"] + params["head_b"]

    folded = jax.jit(head.logits)(params, normalize_tokens(x))
    np.testing.assert_allclose(folded, jax.jit(reference)(params, x), rtol=1e-4, atol=1e-5)


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


def test_runner_evaluators_on_tokens_of_an_encoder():
    """``attentive_probe`` and ``dense_probe`` run by name on an encoder's tokens, with the linear probe's metric
    names; the dense probe gives nothing on a task without masks."""
    from configs import base
    from usjepa_jax.evaluation.data import EvalData, Split
    from usjepa_jax.evaluation.features import random_encoder
    from usjepa_jax.evaluation.runner import run_evaluators

    cfg = base.get_config("smoke")
    cfg.model.depth, cfg.data.image_size = 1, 16
    cfg.evals.evaluators = "attentive_probe,dense_probe"
    rng = np.random.default_rng(0)

    def split(n):
        seg = np.repeat(np.repeat(rng.integers(0, 3, (n, 2, 2)), 8, 1), 8, 2).astype(np.uint8)
        image = (seg[..., None] * 100 + rng.integers(0, 20, (n, 16, 16, 1))).astype(np.uint8)
        return Split(image, np.ones((n, 16, 16), bool), (seg[:, 0, 0] > 0).astype(np.int32), segmentation=seg)

    data = EvalData(split(40), split(20), split(20), 2, ("a", "b"), name="toy")
    encoder = random_encoder(cfg.model, 16)
    results, _ = run_evaluators(encoder, cfg, data)
    for key in ("toy/attentive_probe/macro_f1_mean", "toy/attentive_probe/balanced_accuracy_std",
                "toy/dense_probe/miou_mean", "toy/dense_probe/dice_mean"):
        assert np.isfinite(results[key]), key
    data.train.segmentation = None
    results, _ = run_evaluators(encoder, cfg, data)
    assert not any(k.startswith("toy/dense_probe/") and not k.endswith("seconds") for k in results)


def test_ultrabench_segmentation_masks_follow_the_image_geometry(tmp_path):
    """An UltraBench segmentation task written as UltraBench writes it (paths relative to the dataset folder,
    ``mask`` and ``scan_mask`` keys, 0/255 masks, a scan region that is cropped): the masks land in the splits'
    segmentation, as classes 0/1, aligned with the preprocessed images; the ``masks/<name>/`` lookup agrees."""
    from PIL import Image

    from usjepa_jax.evaluation import labelled

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


def test_pixel_tokens_follow_the_patch_grid():
    from usjepa_jax.evaluation.features import pixel_tokens

    image = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)
    tokens = pixel_tokens(image, 2) * 255  # row-major patches, each patch's pixels row-major
    np.testing.assert_allclose(tokens[0], [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]], atol=1e-4)
