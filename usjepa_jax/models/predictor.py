"""The I-JEPA predictor, which also serves (light, with a pixel output) as the stage-1 teacher's pixel decoder.

From the context encoder's tokens it predicts one output vector per target patch:

1. project context tokens to the predictor width and add sin-cos position embeddings of their positions;
2. for each target block, one learned mask token plus the sin-cos embedding of each target position;
3. each target block is predicted in its own sequence ``[context ; block's mask tokens]`` (the context is
   repeated per block, as in I-JEPA), so target blocks never see each other;
4. transformer blocks, final LayerNorm, keep the mask-token outputs, project linearly to ``out_dim`` (the
   teacher's width for latent prediction, ``patch * patch * channels`` for pixel reconstruction).

Padded slots (``valid == False``) are masked out of attention as keys; their outputs are ignored by the losses.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from usjepa_jax.models.vit import Transformer, dense, gather_tokens, key_padding_mask, sincos_posemb_2d, trunc_normal


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

        # One sequence per (image, target block): repeat the context M times.
        ctx = jnp.repeat(ctx, num_blocks, axis=0)  # [B*M, C, W]
        ctx_valid = jnp.repeat(context_valid, num_blocks, axis=0)
        x = jnp.concatenate([ctx, tgt.reshape(batch * num_blocks, block_len, -1)], axis=1)
        valid = jnp.concatenate([ctx_valid, target_valid.reshape(batch * num_blocks, block_len)], axis=1)

        x = Transformer(self.depth, self.num_heads, self.width * self.mlp_ratio, self.remat, self.dtype,
                        attention=self.attention, remat_policy=self.remat_policy, name="predictor")(x, key_padding_mask(valid))
        x = x[:, -block_len:]
        out = dense(self.out_dim, "predictor_proj", dtype=self.dtype)(x)
        return out.reshape(batch, num_blocks, block_len, self.out_dim)
