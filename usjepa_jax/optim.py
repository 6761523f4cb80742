"""The optimizer of every method: AdamW with I-JEPA's schedules.

- lr: linear warm-up ``lr_start -> lr_peak`` over ``warmup_steps``, then cosine to ``lr_end`` at ``total_steps``
  (``optax.warmup_cosine_decay_schedule``);
- weight decay: cosine *increase* ``wd_start -> wd_end`` over training;
- no decay on biases, LayerNorm scales and other 1-D parameters; optional global-norm clipping.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax


def lr_schedule(o: ml_collections.ConfigDict) -> optax.Schedule:
    # decay_steps counts from step 0; at least one cosine step when warm-up fills the run (warmup == total).
    return optax.warmup_cosine_decay_schedule(o.lr_start, o.lr_peak, o.warmup_steps,
                                              max(o.total_steps, o.warmup_steps + 1), o.lr_end)


def wd_schedule(o: ml_collections.ConfigDict) -> optax.Schedule:
    """Kept as our own: ``optax.cosine_decay_schedule(wd_start, total, alpha=wd_end / wd_start)`` is the same curve
    (to one float32 ulp) but undefined for ``wd_start = 0``."""
    def schedule(step):
        frac = jnp.clip(step / max(o.total_steps, 1), 0.0, 1.0)
        return o.wd_end + (o.wd_start - o.wd_end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    return schedule


def decay_mask(params: Any) -> Any:
    """Weight decay on matrices only."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(o: ml_collections.ConfigDict) -> optax.GradientTransformation:
    adamw = optax.adamw(lr_schedule(o), b1=o.b1, b2=o.b2, weight_decay=wd_schedule(o), mask=decay_mask)
    return optax.chain(optax.clip_by_global_norm(o.grad_clip), adamw) if o.grad_clip else adamw
