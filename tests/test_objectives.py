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


def test_ema_momentum_schedule_and_update():
    assert float(objectives.ema_momentum(0, 100)) == pytest.approx(0.996)
    assert float(objectives.ema_momentum(50, 100)) == pytest.approx(0.998)
    assert float(objectives.ema_momentum(100, 100)) == pytest.approx(1.0)
    out = objectives.ema_update({"w": jnp.ones(3)}, {"w": jnp.zeros(3)}, 0.9)
    np.testing.assert_allclose(out["w"], 0.9)
