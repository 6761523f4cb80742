"""The I-JEPA predictor, which also serves (light, with a pixel output) as the stage-1 teacher's pixel decoder.

From the context encoder's tokens it predicts one output vector per target patch:

1. project context tokens to the predictor width and add sin-cos position embeddings of their positions;
2. for each target block, one learned mask token plus the sin-cos embedding of each target position;
3. each target block is predicted in its own sequence ``[context ; block's mask tokens]`` (the context is
   repeated per block, as in I-JEPA), so target blocks never see each other;
   with ``shared_context`` (a switch, off by default; not in the papers) one sequence per image holds the context
   once and every block's mask tokens, ``[context ; block 1 ; ... ; block M]``, under an attention mask: context
   tokens attend to the context only, a block's mask tokens to the context and their own block. Blocks still
   never see each other, but the context no longer attends to the mask tokens (in I-JEPA each copy of the context
   does), so it is a different computation: about M times fewer predictor tokens (docs/performance.md);
4. transformer blocks, final LayerNorm, keep the mask-token outputs, project linearly to ``out_dim`` (the
   teacher's width for latent prediction, ``patch * patch * channels`` for pixel reconstruction).

Padded slots (``valid == False``) are masked out of attention as keys; their outputs are ignored by the losses.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from usjepa_jax.models.vit import Transformer, dense, gather_tokens, key_padding_mask, sincos_posemb_2d, trunc_normal


def shared_context_mask(context_len: int, num_blocks: int, block_len: int) -> jax.Array:
    """``[1, 1, L, L]`` (``L = context_len + num_blocks * block_len``): may query i attend to key j in the shared
    sequence ``[context ; block 1 ; ... ; block M]``? Context queries: context keys only; a block's queries: the
    context and their own block."""
    segment = np.concatenate([np.zeros(context_len, np.int32), np.repeat(np.arange(1, num_blocks + 1), block_len)])
    allowed = (segment[None, :] == 0) | (segment[None, :] == segment[:, None])
    return jnp.asarray(allowed)[None, None]


class Predictor(nn.Module):
    """``__call__(context, context_idx, context_valid, target_idx, target_valid) -> [B, M, T, out_dim]``.

    context: ``[B, C, D_enc]`` encoder outputs; context_idx/context_valid: ``[B, C]``;
    target_idx/target_valid: ``[B, M, T]`` (M target blocks of at most T patches each).
    """

    grid_size: tuple[int, int]
    out_dim: int
    width: int = 384
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: int = 4
    remat: bool = False
    dtype: Any = jnp.float32
    attention: str = "auto"  # attention implementation (models/vit.py attention())
    remat_policy: str = ""
    shared_context: bool = False  # one sequence per image instead of one per (image, block): see the docstring

    @nn.compact
    def __call__(self, context: jax.Array, context_idx: jax.Array, context_valid: jax.Array,
                 target_idx: jax.Array, target_valid: jax.Array) -> jax.Array:
        batch, num_blocks, block_len = target_idx.shape
        pos = jnp.asarray(sincos_posemb_2d(self.grid_size, self.width))[None]  # [1, N, W]
        pos = jnp.broadcast_to(pos, (batch,) + pos.shape[1:])

        ctx = dense(self.width, "predictor_embed", dtype=self.dtype)(context)
        ctx = ctx + gather_tokens(pos, context_idx).astype(ctx.dtype)  # [B, C, W]

        mask_token = self.param("mask_token", trunc_normal(), (1, 1, 1, self.width))
        tgt_pos = gather_tokens(pos, target_idx.reshape(batch, -1)).reshape(batch, num_blocks, block_len, -1)
        tgt = (mask_token + tgt_pos).astype(ctx.dtype)  # [B, M, T, W]

        if self.shared_context:
            x = jnp.concatenate([ctx, tgt.reshape(batch, num_blocks * block_len, -1)], axis=1)
            valid = jnp.concatenate([context_valid, target_valid.reshape(batch, -1)], axis=1)
            mask = shared_context_mask(context_idx.shape[1], num_blocks, block_len) & key_padding_mask(valid)
        else:  # One sequence per (image, target block): repeat the context M times.
            ctx = jnp.repeat(ctx, num_blocks, axis=0)  # [B*M, C, W]
            ctx_valid = jnp.repeat(context_valid, num_blocks, axis=0)
            x = jnp.concatenate([ctx, tgt.reshape(batch * num_blocks, block_len, -1)], axis=1)
            valid = jnp.concatenate([ctx_valid, target_valid.reshape(batch * num_blocks, block_len)], axis=1)
            mask = key_padding_mask(valid)

        # Only the mask tokens' outputs are kept: the last block computes them alone.
        targets_per_sequence = num_blocks * block_len if self.shared_context else block_len
        x = Transformer(self.depth, self.num_heads, self.width * self.mlp_ratio, self.remat, self.dtype,
                        attention=self.attention, remat_policy=self.remat_policy,
                        name="predictor")(x, mask, None, targets_per_sequence)
        out = dense(self.out_dim, "predictor_proj", dtype=self.dtype)(x)
        return out.reshape(batch, num_blocks, block_len, self.out_dim)
