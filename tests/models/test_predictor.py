"""The predictor (models/predictor.py): shapes, and each target block predicted independently."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from usjepa_jax.models import Predictor


@pytest.mark.parametrize("shared_context", [False, True])
def test_predictor_shapes_and_block_independence(shared_context):
    pred = Predictor(grid_size=(4, 4), out_dim=24, width=16, depth=2, num_heads=2, shared_context=shared_context)
    ctx = jax.random.normal(jax.random.key(0), (2, 5, 32))
    ctx_idx = jnp.tile(jnp.arange(5)[None], (2, 1))
    ctx_valid = jnp.ones((2, 5), bool)
    tgt_idx = jnp.array([[[10, 11, 0], [12, 13, 14]]] * 2)
    tgt_valid = jnp.array([[[True, True, False], [True, True, True]]] * 2)
    params = pred.init(jax.random.key(1), ctx, ctx_idx, ctx_valid, tgt_idx, tgt_valid)["params"]
    out = pred.apply({"params": params}, ctx, ctx_idx, ctx_valid, tgt_idx, tgt_valid)
    assert out.shape == (2, 2, 3, 24)
    # Changing block 1 must not change block 0's predictions (its own sequence, or masked from it).
    tgt_idx2 = tgt_idx.at[:, 1].set(jnp.array([1, 2, 3]))
    out2 = pred.apply({"params": params}, ctx, ctx_idx, ctx_valid, tgt_idx2, tgt_valid)
    np.testing.assert_allclose(out2[:, 0], out[:, 0], atol=1e-6)
    assert not np.allclose(out2[:, 1], out[:, 1])
    # Invalid context slots are ignored.
    ctx_noise = ctx.at[:, 4].set(100.0)
    out3 = pred.apply({"params": params}, ctx_noise, ctx_idx, ctx_valid.at[:, 4].set(False), tgt_idx, tgt_valid)
    out4 = pred.apply({"params": params}, ctx, ctx_idx, ctx_valid.at[:, 4].set(False), tgt_idx, tgt_valid)
    np.testing.assert_allclose(out3, out4, atol=1e-5)


def test_shared_context_predicts_each_block_as_if_alone_and_ignores_padding():
    """With ``shared_context`` a block's predictions depend on the context and that block only: they equal the
    predictor's output for that block given alone, and padded context or target slots change nothing. The shared
    sequence is not I-JEPA's: the context does not attend to the mask tokens, so the outputs differ from the
    default's."""
    kwargs = dict(grid_size=(4, 4), out_dim=8, width=16, depth=2, num_heads=2)
    shared, repeated = Predictor(**kwargs, shared_context=True), Predictor(**kwargs)
    key = jax.random.key(0)
    ctx = jax.random.normal(key, (2, 6, 12))
    ctx_idx = jnp.array([[0, 1, 2, 4, 5, 6], [3, 7, 8, 9, 15, 0]])
    ctx_valid = jnp.array([[True] * 6, [True] * 5 + [False]])
    tgt_idx = jnp.array([[[10, 11, 14], [12, 13, 0]], [[1, 2, 5], [6, 10, 11]]])
    tgt_valid = jnp.array([[[True] * 3, [True, True, False]], [[True] * 3] * 2])
    params = shared.init(key, ctx, ctx_idx, ctx_valid, tgt_idx, tgt_valid)["params"]
    # Weights of a trained model's size: at init (std 0.02) attention barely moves the tokens.
    params = jax.tree.map(lambda w: 10.0 * w + 0.05 * jax.random.normal(key, w.shape), params)
    out = shared.apply({"params": params}, ctx, ctx_idx, ctx_valid, tgt_idx, tgt_valid)
    for m in range(2):
        alone = shared.apply({"params": params}, ctx, ctx_idx, ctx_valid, tgt_idx[:, m:m + 1], tgt_valid[:, m:m + 1])
        np.testing.assert_allclose(alone[:, 0], out[:, m], atol=1e-5)
    # More padding on both (as a larger bucket gives) leaves every valid prediction as it was.
    pad_ctx = jnp.concatenate([ctx, 50.0 * jnp.ones((2, 3, 12))], axis=1)
    pad = dict(context_idx=jnp.pad(ctx_idx, ((0, 0), (0, 3))), context_valid=jnp.pad(ctx_valid, ((0, 0), (0, 3))),
               target_idx=jnp.pad(tgt_idx, ((0, 0), (0, 0), (0, 2))),
               target_valid=jnp.pad(tgt_valid, ((0, 0), (0, 0), (0, 2))))
    padded = shared.apply({"params": params}, pad_ctx, **pad)[:, :, :3]
    np.testing.assert_allclose(np.where(tgt_valid[..., None], padded, 0), np.where(tgt_valid[..., None], out, 0),
                               atol=1e-5)
    assert not np.allclose(repeated.apply({"params": params}, ctx, ctx_idx, ctx_valid, tgt_idx, tgt_valid), out,
                           atol=1e-3)
