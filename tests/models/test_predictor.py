"""The predictor (models/predictor.py): shapes, and each target block predicted independently."""

import jax
import jax.numpy as jnp
import numpy as np

from usjepa_jax.models import Predictor


def test_predictor_shapes_and_block_independence():
    pred = Predictor(grid_size=(4, 4), out_dim=24, width=16, depth=2, num_heads=2)
    ctx = jax.random.normal(jax.random.key(0), (2, 5, 32))
    ctx_idx = jnp.tile(jnp.arange(5)[None], (2, 1))
    ctx_valid = jnp.ones((2, 5), bool)
    tgt_idx = jnp.array([[[10, 11, 0], [12, 13, 14]]] * 2)
    tgt_valid = jnp.array([[[True, True, False], [True, True, True]]] * 2)
    params = pred.init(jax.random.key(1), ctx, ctx_idx, ctx_valid, tgt_idx, tgt_valid)["params"]
    out = pred.apply({"params": params}, ctx, ctx_idx, ctx_valid, tgt_idx, tgt_valid)
    assert out.shape == (2, 2, 3, 24)
    # Changing block 1 must not change block 0's predictions (each block is its own sequence).
    tgt_idx2 = tgt_idx.at[:, 1].set(jnp.array([1, 2, 3]))
    out2 = pred.apply({"params": params}, ctx, ctx_idx, ctx_valid, tgt_idx2, tgt_valid)
    np.testing.assert_allclose(out2[:, 0], out[:, 0], atol=1e-6)
    assert not np.allclose(out2[:, 1], out[:, 1])
    # Invalid context slots are ignored.
    ctx_noise = ctx.at[:, 4].set(100.0)
    out3 = pred.apply({"params": params}, ctx_noise, ctx_idx, ctx_valid.at[:, 4].set(False), tgt_idx, tgt_valid)
    out4 = pred.apply({"params": params}, ctx, ctx_idx, ctx_valid.at[:, 4].set(False), tgt_idx, tgt_valid)
    np.testing.assert_allclose(out3, out4, atol=1e-5)
