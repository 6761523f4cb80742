"""Attentive probe on frozen patch tokens: one cross-attention block with a learned query, then a linear classifier.

The design follows the attentive classifier of the V-JEPA evaluation (facebookresearch/jepa,
``evals/image_classification_frozen``, ``src/models/attentive_pooler.py``): one learned query token attends over the
frozen patch tokens in one complete pre-norm block, ``q = q + xattn(q, LN(tokens))``, ``q = q + MLP(LN(q))``, and a
linear layer maps ``q`` to the class logits (no final norm). Weights trunc-normal std 0.02, zero biases, LayerNorms
at 1 / 0; the attention output projection and the second MLP layer are divided by sqrt(2) (their layer-1 rescaling).
Unlike mean pooling, the probe can choose *where* to read: a label held by one position is found.

Protocol (``config.evals.attentive``; our choices where the V-JEPA image evaluation, tuned for ImageNet on 64 GPUs,
does not transfer to a 2-core CPU):
- AdamW, lr 1e-3 with a cosine decay to 0 over ``max_epochs`` (as V-JEPA, no warm-up), weight decay 1e-3
  (V-JEPA's), on every parameter;
- batch 64 (V-JEPA: 16 per GPU), at most 20 epochs (V-JEPA's fixed count) with early stopping on the
  validation cross-entropy, patience 5; the parameters of the best validation epoch are kept (at batch 256 and 20
  epochs, 160 steps on 2000 examples left the probe short: docs/probes.md);
- 4 heads (or the largest count below that divides the token width: 1 for the oracle's 19 tissue codes), MLP
  ratio 4, width = the token width (no projection in);
- tokens z-scored per dimension with the train split's statistics over all positions (as the linear probe);
- 5 seeds (initial weights and shuffling), ``vmap``-ed; metrics as the linear probe's: macro-F1, accuracy, balanced
  accuracy, mean and std over seeds.
It runs in the linear probe's loop (probe.py: one ``jax.jit``, ``lax.while_loop`` over epochs with the early stop,
``lax.scan`` over minibatches, padding to shared static sizes), with ``AttentiveHead`` as the model.

Cost: with a single query the block is computed in an order that never projects the tokens one by one. The score of
token ``t`` in head ``h`` is ``(W_k x_t + b_k)_h . q_h / sqrt(d_h) = x_t . (W_k,h^T q_h) / sqrt(d_h) + const``
(the constant cancels in the softmax), and since the weights sum to one, ``sum_t a_t (W_v x_t + b_v) =
W_v (sum_t a_t x_t) + b_v``. The first LayerNorm's normalisation does not depend on the parameters, so it is
applied once to the data (``normalize_tokens``, part of the probe's transform) and only its affine part is
learned, folded into the query and the pooled tokens in the same way. The result is exactly standard
cross-attention, at ``T D H`` rather than ``T D^2`` operations per example and step (docs/probes.md: the speed).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from usjepa_jax.evaluation.probe import ProbeConfig, TrainedProbe, standardizer, train_probe


@dataclasses.dataclass(frozen=True)
class AttentiveHead:
    """One cross-attention block with a learned query, then a linear classifier (module docstring)."""

    num_heads: int = 4
    mlp_ratio: float = 4.0

    def heads(self, width: int) -> int:
        """``num_heads``, or the largest count below it that divides the token width."""
        return max(h for h in range(1, self.num_heads + 1) if width % h == 0)

    def init(self, key, feature_shape: tuple[int, ...], num_classes: int) -> dict:
        d = feature_shape[-1]
        hidden = int(d * self.mlp_ratio)
        keys = iter(jax.random.split(key, 8))

        def dense(shape, scale=1.0):
            return 0.02 * scale * jax.random.truncated_normal(next(keys), -2.0, 2.0, shape)

        def norm():
            return {"scale": jnp.ones((d,)), "bias": jnp.zeros((d,))}

        zeros = jnp.zeros
        return {"query": dense((d,)), "norm1": norm(), "norm2": norm(),
                "wq": dense((d, d)), "bq": zeros((d,)), "wk": dense((d, d)), "wv": dense((d, d)), "bv": zeros((d,)),
                "wo": dense((d, d), 1 / math.sqrt(2)), "bo": zeros((d,)),
                "fc1": dense((d, hidden)), "b1": zeros((hidden,)),
                "fc2": dense((hidden, d), 1 / math.sqrt(2)), "b2": zeros((d,)),
                "head_w": dense((d, num_classes)), "head_b": zeros((num_classes,))}

    def attention(self, params, x):
        """Attention weights ``[B, T, H]`` of the query over tokens ``x [B, T, D]`` normalised by ``normalize_tokens``.

        The first LayerNorm's affine part and the key projection are folded into the query: with ``n_t`` the
        normalised token, ``(W_k,h^T (s * n_t + b)) . q_h = n_t . (s * W_k,h^T q_h) + const``; the key bias and
        the LayerNorm bias only shift all scores of a head and cancel in the softmax."""
        d = x.shape[-1]
        h = self.heads(d)
        dh = d // h
        q = (params["query"] @ params["wq"] + params["bq"]).reshape(h, dh)
        u = jnp.einsum("dhe,he->dh", params["wk"].reshape(d, h, dh), q) / math.sqrt(dh)
        return jax.nn.softmax(x @ (params["norm1"]["scale"][:, None] * u), axis=1)

    def logits(self, params, x):
        """Class logits ``[B, C]`` of tokens ``x [B, T, D]`` normalised by ``normalize_tokens``."""
        b, _, d = x.shape
        h = self.heads(d)
        dh = d // h
        a = self.attention(params, x)
        # Per head, the attention-weighted mean of the LayerNormed tokens (the weights sum to one, so the affine
        # part applies after the mean).
        pooled = jnp.einsum("bth,btd->bhd", a, x) * params["norm1"]["scale"] + params["norm1"]["bias"]
        v = jnp.einsum("bhd,dhe->bhe", pooled, params["wv"].reshape(d, h, dh)) + params["bv"].reshape(h, dh)
        y = params["query"] + v.reshape(b, d) @ params["wo"] + params["bo"]
        hidden = jax.nn.gelu(_layer_norm(y, params["norm2"]) @ params["fc1"] + params["b1"], approximate=False)
        y = y + hidden @ params["fc2"] + params["b2"]
        return y @ params["head_w"] + params["head_b"]


def _layer_norm(x, p, eps: float = 1e-6):
    return normalize_tokens(x, eps, xp=jnp) * p["scale"] + p["bias"]


def normalize_tokens(x, eps: float = 1e-6, xp=np):
    """Each token to zero mean and unit variance over its features: the block's first LayerNorm without its affine
    part, which does not depend on the parameters and so is applied once to the data, not at every step."""
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / xp.sqrt(var + eps)


def train_attentive_probe(tokens_train: np.ndarray, y_train: np.ndarray, tokens_val: np.ndarray, y_val: np.ndarray,
                          num_classes: int, cfg: ProbeConfig, head: AttentiveHead = AttentiveHead(), seed: int = 0,
                          pad_to: tuple[int, int] | None = None) -> TrainedProbe:
    """The attentive probe on tokens ``[N, T, D]``: ``TrainedProbe`` (``evaluate(tokens, y)`` as the linear probe's;
    its transform z-scores the tokens with the train statistics, then normalises each token)."""
    if np.ndim(tokens_train) != 3:
        raise ValueError(f"attentive probe: expected tokens [N, T, D], got shape {np.shape(tokens_train)}.")
    z = standardizer(tokens_train) if cfg.standardize else (lambda x: np.asarray(x, np.float32))
    return train_probe(tokens_train, y_train, tokens_val, y_val, num_classes, cfg, seed, pad_to, head=head,
                       transform=lambda x: normalize_tokens(z(x)).astype(np.float32))
