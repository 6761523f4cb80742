"""The attentive probe (evaluation/attentive.py): it finds what pooling cannot; its head is standard cross-attention."""

import numpy as np
import pytest

from usjepa_jax.evaluation.attentive import AttentiveHead, normalize_tokens, train_attentive_probe
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
