"""Loss functions: zero at the optimum, reference values, masking, stop-gradient, EMA schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from usjepa_jax import objectives


@pytest.mark.parametrize("kind", objectives.LOSS_KINDS)
def test_latent_loss_is_zero_when_prediction_equals_target(kind):
    target = jax.random.normal(jax.random.key(0), (2, 4, 5, 8))
    valid = jnp.ones((2, 4, 5), bool)
    normed = objectives.layer_norm_no_affine(target)
    assert float(objectives.latent_prediction_loss(normed, target, valid, kind=kind)) < 1e-6
    assert float(objectives.latent_prediction_loss(target, target, valid, kind=kind,
                                                   normalize_targets=False)) == 0.0


def test_smooth_l1_matches_reference_definition():
    pred = jnp.array([0.0, 0.5, 2.0, -3.0])
    target = jnp.zeros(4)
    np.testing.assert_allclose(objectives.elementwise_loss(pred, target, "smooth_l1"), [0.0, 0.125, 1.5, 2.5])


def test_padded_patches_and_block_averaging():
    pred = jnp.zeros((1, 2, 3, 1))
    target = jnp.array([[[[1.0], [1.0], [99.0]], [[3.0], [3.0], [3.0]]]])
    valid = jnp.array([[[True, True, False], [True, True, True]]])
    # block 0: mean |1| = 1 (the padded 99 ignored); block 1: mean 3 -> average over blocks = 2.
    loss = objectives.latent_prediction_loss(pred, target, valid, kind="l1", normalize_targets=False)
    np.testing.assert_allclose(loss, 2.0)


def test_standardized_targets_remove_a_shared_direction_and_ignore_padding():
    # Tokens = one large direction every token shares + small per-token signal: the layer norm keeps the shared
    # direction (it works per token), the batch standardisation removes it and leaves each feature at unit spread.
    rng = np.random.default_rng(0)
    shared = rng.normal(size=16) * 30.0
    signal = rng.normal(size=(2, 3, 5, 16))
    target = jnp.asarray(shared + signal)
    valid = np.ones((2, 3, 5), bool)
    valid[1, 2, 3:] = False
    padded = np.where(valid[..., None], target, 1e4)  # padding holds garbage: it must not enter the statistics
    out = np.asarray(objectives.standardize_features(jnp.asarray(padded), jnp.asarray(valid)))[valid]
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=0), 1.0, atol=1e-3)
    layer_normed = np.asarray(objectives.layer_norm_no_affine(target))[valid]
    assert layer_normed.std(axis=0).mean() < 0.1  # the shared direction dominates after the layer norm alone
    # the loss with the switch is the loss against the standardised targets, padding ignored
    pred = jnp.asarray(rng.normal(size=(2, 3, 5, 16)))
    expected = objectives.latent_prediction_loss(
        pred, objectives.standardize_features(objectives.layer_norm_no_affine(jnp.asarray(padded)),
                                              jnp.asarray(valid)), jnp.asarray(valid), normalize_targets=False)
    got = objectives.latent_prediction_loss(pred, jnp.asarray(padded), jnp.asarray(valid), standardize_targets=True)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_no_gradient_flows_into_targets():
    target = jax.random.normal(jax.random.key(0), (1, 1, 4, 8))
    valid = jnp.ones((1, 1, 4), bool)
    grad = jax.grad(lambda t: objectives.latent_prediction_loss(t * 0.5, t, valid))(target)
    pred_only = jax.grad(lambda p: objectives.latent_prediction_loss(p * 0.5, target, valid))(target)
    np.testing.assert_allclose(grad, pred_only, atol=1e-7)


def test_patchify_and_pixel_loss():
    images = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1)
    patches = objectives.patchify(images, 2)
    assert patches.shape == (2, 4, 4)
    np.testing.assert_array_equal(patches[0, 1], [2, 3, 6, 7])  # top-right patch, row-major pixels
    normed = objectives.normalized_patch_targets(patches)
    idx = jnp.array([[[1, 3]], [[0, 2]]])
    valid = jnp.ones((2, 1, 2), bool)
    perfect = jnp.take_along_axis(normed, idx.reshape(2, 2, 1), axis=1).reshape(2, 1, 2, 4)
    target = objectives.gather_patches(objectives.pixel_targets(images, 2), idx)
    np.testing.assert_array_equal(target, perfect)
    assert float(objectives.reconstruction_loss(perfect, target, valid)) < 1e-8
    assert float(objectives.reconstruction_loss(perfect + 1.0, target, valid)) == pytest.approx(1.0)


def test_lowpass_equals_a_reference_gaussian_filter():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = np.random.default_rng(0).standard_normal((2, 24, 20, 1)).astype(np.float32)
    out = np.asarray(objectives.gaussian_lowpass(jnp.asarray(x), 2.0))
    ref = np.stack([ndimage.gaussian_filter(im[..., 0], 2.0, mode="mirror", truncate=3.0) for im in x])[..., None]
    np.testing.assert_allclose(out, ref, atol=1e-5)
    # White noise: the variance falls by the squared sum of the 2-d kernel's squares (1 / (4 pi sigma^2) in the
    # continuum, 0.0199 at sigma 2); a constant image is unchanged.
    noise = jax.random.normal(jax.random.key(0), (4, 96, 96, 1))
    assert float(objectives.gaussian_lowpass(noise, 2.0)[:, 8:-8, 8:-8].var()) == pytest.approx(
        1 / (4 * np.pi * 4), rel=0.1)
    np.testing.assert_allclose(objectives.gaussian_lowpass(jnp.full((1, 16, 16, 1), 3.0), 1.5), 3.0, rtol=1e-6)


def test_hog_targets_see_edges_by_orientation_and_ignore_brightness():
    p = 8  # 2 x 2 cells of 4 px per patch, 9 bins of 20 degrees: 36 values per patch
    image = np.zeros((1, 16, 16, 1), np.float32)
    image[0, :, 10:] = 1.0  # a vertical edge between columns 9 and 10: horizontal gradient, orientation 0
    hog = np.asarray(objectives.hog_targets(jnp.asarray(image), p))
    assert hog.shape == (1, 4, objectives.pixel_target_width("hog", p)) == (1, 4, 36)
    cells = hog.reshape(1, 4, 4, objectives.HOG_BINS)  # patch (row-major), cell (row-major), bin
    assert np.abs(hog[0, [0, 2]]).max() == 0  # the left patches see no gradient
    right = cells[0, [1, 3]]  # central differences at columns 9 and 10: the right patches' left cells
    assert right[:, [0, 2], 1:].max() == 0 and right[:, [0, 2], 0].min() > 0 and right[:, [1, 3]].max() == 0
    np.testing.assert_allclose(np.linalg.norm(hog[0, [1, 3]], axis=-1), 1.0, rtol=1e-5)
    turned = np.asarray(objectives.hog_targets(jnp.asarray(image.transpose(0, 2, 1, 3)), p)).reshape(1, 4, 4, -1)
    assert turned[..., 4].sum() > 0 and np.delete(turned, 4, axis=-1).max() == 0  # 90 degrees: bin 4 (80-100)
    # Histograms of a textured image are the same after a brightness and contrast change.
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 1))
    np.testing.assert_allclose(objectives.hog_targets(3.0 * x + 5.0, p), objectives.hog_targets(x, p), atol=1e-5)


@pytest.mark.parametrize("kind", objectives.PIXEL_TARGETS)
def test_pixel_target_kinds(kind):
    images = jax.random.uniform(jax.random.key(2), (2, 16, 16, 1))
    out = objectives.pixel_targets(images, 8, normalize_pixels=False, kind=kind, lowpass_sigma=1.0)
    assert out.shape == (2, 4, objectives.pixel_target_width(kind, 8))
    expected = {"pixels": objectives.patchify(images, 8),
                "lowpass": objectives.patchify(objectives.gaussian_lowpass(images, 1.0), 8),
                "hog": objectives.hog_targets(images, 8)}[kind]
    np.testing.assert_allclose(out, expected, atol=1e-6)
    with pytest.raises(ValueError, match="'edges' is not one of"):
        objectives.pixel_targets(images, 8, kind="edges")


def test_ema_momentum_schedule_and_update():
    assert float(objectives.ema_momentum(0, 100)) == pytest.approx(0.996)
    assert float(objectives.ema_momentum(50, 100)) == pytest.approx(0.998)
    assert float(objectives.ema_momentum(100, 100)) == pytest.approx(1.0)
    out = objectives.ema_update({"w": jnp.ones(3)}, {"w": jnp.zeros(3)}, 0.9)
    np.testing.assert_allclose(out["w"], 0.9)
