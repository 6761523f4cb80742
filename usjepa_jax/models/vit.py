"""Vision Transformer encoder (linen) with a variant table, I-JEPA initialisation and token selection.

Parameter names mirror timm's ``VisionTransformer`` (``patch_embed``, ``blocks_N/attn/qkv``, ``norm``...) so that
checkpoint conversion in either direction is a table lookup, not guesswork.

Shapes: images are ``[batch, height, width, channels]``; tokens are ``[batch, tokens, width]``; a patch index
is the flat row-major position on the ``[grid_h, grid_w]`` patch grid.

BEiT-style options, all off by default (and then absent from the parameters): a relative position bias table per
block (``rel_pos_bias``), layer scale (``layer_scale``), no absolute position embedding (``posemb='none'``), no
final LayerNorm (``final_norm=False``, BEiT's mean-pooling heads norm after pooling). Together they express
BEiT/USFM-style teachers exactly; BEiT's separate q/v biases are the ``qkv`` bias with a zero k part.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# The variant table and the names a config may give are the config schema's (jax-free, config.py).
from usjepa_jax.config import ATTENTION_IMPLS, PATCH_SIZES, REMAT_POLICIES, parse_variant
from usjepa_jax.config import VIT_VARIANTS as VARIANTS

POSEMBS = ("sincos2d", "learn", "none")
INIT_STD = 0.02  # I-JEPA: trunc-normal std 0.02 for every Linear/Conv kernel.
# linen's truncated_normal(s) is s * N(0, 1) truncated to [-2, 2], whose std is 0.88 s; PyTorch's
# trunc_normal_(std=0.02) (I-JEPA, timm) truncates at +-2 *absolute*, i.e. is N(0, 0.02^2) in effect. Dividing by
# the truncated std makes the measured std 0.02 (tails cut at 2.27 std; docs/method.md, deviations).
TRUNCATED_NORMAL_STD = 0.87962566103423978


def trunc_normal(std: float = INIT_STD) -> nn.initializers.Initializer:
    """A truncated-normal initializer whose samples have standard deviation ``std``."""
    return nn.initializers.truncated_normal(std / TRUNCATED_NORMAL_STD)

LN_EPS = 1e-6


def sincos_posemb_2d(grid_size: Sequence[int], width: int) -> np.ndarray:
    """Fixed 2-D sin-cos position embeddings ``[grid_h * grid_w, width]`` (float32), MAE/I-JEPA convention.

    The first half of the channels encodes the column (w) coordinate, the second half the row (h) coordinate;
    each half is ``[sin(pos * omega), cos(pos * omega)]`` with ``omega_k = 10000^(-k / (width / 4))``.
    """
    if width % 4:
        raise ValueError(f"sin-cos position embeddings need width divisible by 4, got {width}.")
    gh, gw = grid_size
    rows, cols = np.meshgrid(np.arange(gh, dtype=np.float64), np.arange(gw, dtype=np.float64), indexing="ij")
    omega = 1.0 / 10000 ** (np.arange(width // 4, dtype=np.float64) / (width / 4.0))

    def embed_1d(pos: np.ndarray) -> np.ndarray:
        angles = pos.reshape(-1)[:, None] * omega[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([embed_1d(cols), embed_1d(rows)], axis=1).astype(np.float32)


def gather_tokens(tokens: jax.Array, idx: jax.Array) -> jax.Array:
    """``tokens [B, N, D]``, ``idx [B, K]`` -> ``[B, K, D]`` (per-example gather along the token axis)."""
    return jnp.take_along_axis(tokens, idx[..., None], axis=1)


def num_relative_distances(grid_size: Sequence[int]) -> int:
    """Rows of a BEiT relative position bias table: every 2-D offset on the grid, plus cls->patch, patch->cls and
    cls->cls."""
    gh, gw = grid_size
    return (2 * gh - 1) * (2 * gw - 1) + 3


def relative_position_index(grid_size: Sequence[int]) -> np.ndarray:
    """``[N + 1, N + 1]`` table rows for every (query, key) pair; position 0 is the class token, patch p is p + 1.

    BEiT's convention (offsets shifted to be non-negative, row offset scaled by ``2 * grid_w - 1``; the three last
    rows for the class token), so that imported tables index the same way.
    """
    gh, gw = grid_size
    rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    coords = np.stack([rows.reshape(-1), cols.reshape(-1)])  # [2, N]
    rel = coords[:, :, None] - coords[:, None, :]  # [2, N, N]
    patch = (rel[0] + gh - 1) * (2 * gw - 1) + (rel[1] + gw - 1)
    n, distances = gh * gw, num_relative_distances(grid_size)
    index = np.zeros((n + 1, n + 1), np.int32)
    index[1:, 1:] = patch
    index[0, :] = distances - 3  # the class token as query
    index[:, 0] = distances - 2  # ... as key
    index[0, 0] = distances - 1
    return index


def key_padding_mask(valid: jax.Array | None) -> jax.Array | None:
    """``valid [B, K]`` -> attention mask ``[B, 1, 1, K]``: padded tokens are never attended to."""
    return None if valid is None else valid[:, None, None, :]


def dense(features: int, name: str, scale: float = 1.0, dtype: Any = jnp.float32) -> nn.Dense:
    """Linear layer with the I-JEPA init (trunc-normal std 0.02, divided by ``scale``; zero bias)."""
    return nn.Dense(features, name=name, dtype=dtype,
                    kernel_init=trunc_normal(INIT_STD / scale),
                    bias_init=nn.initializers.zeros)


def einsum_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                     bias: jax.Array | None = None) -> jax.Array:
    """``softmax(q k^T / sqrt(d) | mask) v`` for ``q, k, v [B, L, H, d]`` -> ``[B, L, H, d]``, written for XLA:CPU.

    The same function as ``jax.nn.dot_product_attention(q, k, v, mask=mask)`` (tested to float tolerance), but
    faster on CPU (benchmarks/train_step.py, docs/performance.md): the heads are moved in front
    once (``[B, H, L, d]``, so both dots are plain batched matmuls instead of XLA:CPU's strided ones), the scale is
    applied to ``q`` (``L*d`` multiplies, not ``L*L``), and the softmax normalisation divides the ``[.., L, d]``
    output instead of the ``[.., L, L]`` weights. Masked keys get the dtype's lowest value (exp -> 0); every row
    has at least one valid key (the masks keep ``min_keep >= 1`` patches). Logits and softmax are float32.
    """
    scale = q.shape[-1] ** -0.5
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q * jnp.asarray(scale, q.dtype), k, v))  # [B, H, L, d]
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
    if bias is not None:  # additive, [B, H, q, k] (e.g. BEiT's relative position bias)
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    # The shift cancels in the ratio below; stop_gradient spares its (zero) gradient.
    weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
    out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
    out = out / weights.sum(axis=-1, keepdims=True)
    return out.astype(v.dtype).transpose(0, 2, 1, 3)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, impl: str = "auto",
              bias: jax.Array | None = None) -> jax.Array:
    """Multi-head attention by implementation: ``einsum`` (:func:`einsum_attention`, the fastest on CPU),
    ``xla`` or ``cudnn`` (``jax.nn.dot_product_attention`` with that implementation; ``cudnn`` is the fused
    flash-attention kernel on NVIDIA GPUs, bf16/fp16 only), ``auto`` = ``einsum`` on CPU, otherwise
    ``jax.nn.dot_product_attention``'s own choice (cuDNN where it applies, else XLA)."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"Unknown attention implementation {impl!r}: expected one of {ATTENTION_IMPLS}.")
    if impl == "einsum" or (impl == "auto" and jax.default_backend() == "cpu"):
        return einsum_attention(q, k, v, mask, bias)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask,
                                        implementation=None if impl == "auto" else impl)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (timm layout) and a key-padding mask.

    With ``rel_pos_grid`` (BEiT), a learned bias per head and relative offset, ``relative_position_bias_table
    [num_relative_distances, heads]``, is added to the attention logits; ``positions [B or 1, T]`` says where each
    token sits (0: class token, p + 1: patch p), so that a subset of the patches gets the biases of its offsets.
    """

    num_heads: int
    out_scale: float = 1.0  # I-JEPA rescales the output projection of layer l by 1/sqrt(2l).
    dtype: Any = jnp.float32
    rel_pos_grid: tuple[int, int] | None = None
    impl: str = "auto"  # see attention()

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, positions: jax.Array | None = None,
                 outputs: int | None = None) -> jax.Array:
        """``[B, T, width]`` -> ``[B, T, width]``; with ``outputs``, only the last ``outputs`` tokens' rows
        ``[B, outputs, width]`` (queries from those tokens, keys and values from all: the same rows)."""
        batch, length, width = x.shape
        head_dim = width // self.num_heads
        qkv = dense(3 * width, "qkv", dtype=self.dtype)(x)
        q, k, v = jnp.split(qkv.reshape(batch, length, 3, self.num_heads, head_dim), 3, axis=2)
        queries = length if outputs is None else outputs
        bias = None
        if self.rel_pos_grid is not None:
            table = self.param("relative_position_bias_table", nn.initializers.zeros,
                               (num_relative_distances(self.rel_pos_grid), self.num_heads))
            index = jnp.asarray(relative_position_index(self.rel_pos_grid))
            rows = index[positions[:, -queries:, None], positions[:, None, :]]  # [B, queries, T]
            bias = jnp.moveaxis(table[rows], -1, 1).astype(self.dtype)  # [B, heads, queries, T]
        if mask is not None and mask.shape[-2] > 1:  # a per-query mask [.., T, T]: the kept queries' rows
            mask = mask[..., -queries:, :]
        out = attention(q[:, -queries:, 0], k[:, :, 0], v[:, :, 0], mask, self.impl, bias=bias)
        return dense(width, "proj", scale=self.out_scale, dtype=self.dtype)(out.reshape(batch, queries, width))


class Mlp(nn.Module):
    hidden: int
    out_scale: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.gelu(dense(self.hidden, "fc1", dtype=self.dtype)(x), approximate=False)
        return dense(x.shape[-1], "fc2", scale=self.out_scale, dtype=self.dtype)(h)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    With ``layer_scale`` (its initial value; 0 = off), each branch is scaled per channel by a learned ``gamma_1``
    / ``gamma_2 [width]`` (CaiT / BEiT layer scale).
    """

    num_heads: int
    mlp_dim: int
    layer_id: int  # 1-based, for the I-JEPA residual-branch rescaling
    dtype: Any = jnp.float32
    rel_pos_grid: tuple[int, int] | None = None
    layer_scale: float = 0.0
    attention: str = "auto"  # attention implementation, see attention()

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, positions: jax.Array | None = None,
                 outputs: int | None = None) -> jax.Array:
        """``[B, T, width]`` -> the same; with ``outputs``, the last ``outputs`` tokens only (every token still
        serves as a key and value: those rows are what the whole block computes for them)."""
        scale = math.sqrt(2.0 * self.layer_id)
        width = x.shape[-1]
        gamma_1 = gamma_2 = 1.0
        if self.layer_scale:
            init = nn.initializers.constant(self.layer_scale)
            gamma_1 = self.param("gamma_1", init, (width,)).astype(self.dtype)
            gamma_2 = self.param("gamma_2", init, (width,)).astype(self.dtype)
        h = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm1")(x)
        if outputs is not None:
            x = x[:, -outputs:]
        x = x + gamma_1 * Attention(self.num_heads, scale, self.dtype, self.rel_pos_grid, self.attention,
                                    name="attn")(h, mask, positions, outputs)
        h = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm2")(x)
        return x + gamma_2 * Mlp(self.mlp_dim, scale, self.dtype, name="mlp")(h)


def remat_policy(name: str) -> Any:
    """A ``jax.checkpoint_policies`` member by name (``REMAT_POLICIES``): what a rematerialised block keeps from
    its forward pass. ``""`` (= ``nothing_saveable``) keeps nothing, the smallest memory; ``dots_saveable`` keeps
    the matmul outputs and recomputes only the cheap element-wise ops."""
    if name not in REMAT_POLICIES:
        raise ValueError(f"Unknown remat policy {name!r}: expected one of {REMAT_POLICIES}.")
    return getattr(jax.checkpoint_policies, name) if name else None


class Transformer(nn.Module):
    """A stack of ``Block``s followed by the final LayerNorm (``norm``; none with ``final_norm=False``)."""

    depth: int
    num_heads: int
    mlp_dim: int
    remat: bool = False
    dtype: Any = jnp.float32
    rel_pos_grid: tuple[int, int] | None = None
    layer_scale: float = 0.0
    final_norm: bool = True
    attention: str = "auto"
    remat_policy: str = ""  # with remat: a jax.checkpoint_policies name ("" = save nothing, recompute all)

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, positions: jax.Array | None = None,
                 outputs: int | None = None) -> jax.Array:
        """``[B, T, width]`` -> the same; with ``outputs``, the last ``outputs`` tokens' outputs only: the last
        block computes queries, attention rows, projection and MLP for those tokens alone (the predictor keeps
        only its mask tokens), the same values as the whole stack's for them."""
        block_cls = (nn.remat(Block, policy=remat_policy(self.remat_policy), static_argnums=(4,)) if self.remat
                     else Block)
        for i in range(self.depth):
            x = block_cls(self.num_heads, self.mlp_dim, i + 1, self.dtype, self.rel_pos_grid, self.layer_scale,
                          self.attention, name=f"blocks_{i}")(x, mask, positions,
                                                               outputs if i == self.depth - 1 else None)
        if not self.final_norm:
            return x
        return nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm")(x)


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """``[B, H, W, C]`` -> ``[B, N, p*p*C]`` with patches in row-major grid order, pixels in (row, col, C) order
    (the order of a ``[p, p, C, width]`` patch-embedding kernel, flattened)."""
    batch, height, width, channels = images.shape
    p = patch_size
    x = images.reshape(batch, height // p, p, width // p, p, channels)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, (height // p) * (width // p), p * p * channels)


class PatchEmbed(nn.Module):
    """The patch embedding: ``[B, H, W, C]`` images -> ``[B, (H/p) * (W/p), width]`` tokens, row-major.

    The same function and parameters as ``nn.Conv(width, (p, p), strides=(p, p), padding='VALID')`` (``kernel
    [p, p, C, width]``, ``bias [width]``, same initialisation; tested), computed as one matmul of the flattened
    patches: XLA:CPU runs a strided convolution's weight gradient as a slow generic loop, a matmul's at full speed.
    """

    width: int
    patch_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        p, channels = self.patch_size, images.shape[-1]
        kernel = self.param("kernel", trunc_normal(), (p, p, channels, self.width))
        bias = self.param("bias", nn.initializers.zeros, (self.width,))
        kernel = kernel.reshape(p * p * channels, self.width).astype(self.dtype)
        return patchify(images.astype(self.dtype), p) @ kernel + bias.astype(self.dtype)


class VisionTransformer(nn.Module):
    """ViT encoder that can encode only a subset of its patches.

    ``__call__(images, token_idx=None, token_valid=None)`` embeds all patches, adds position embeddings, keeps
    the patches named by ``token_idx [B, K]`` (all when None), runs the blocks with padded tokens
    (``token_valid == False``) masked out of attention, and returns ``(tokens [B, K, width], aux)``; ``aux``
    holds ``grid_size``. An optional class token (for imported teachers) is prepended inside and stripped from the
    output.
    """

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    patch_size: int
    posemb: str = "sincos2d"  # or "learn" (timm-style learned embeddings, trunc-normal 0.02 init), or "none"
    class_token: bool = False
    remat: bool = False
    rel_pos_bias: bool = False  # BEiT relative position bias tables, one per block
    layer_scale: float = 0.0  # initial value of per-block layer scale; 0 = none
    final_norm: bool = True
    dtype: Any = jnp.float32  # compute dtype; parameters stay float32
    attention: str = "auto"  # attention implementation (not part of the architecture: any gives the same model)
    remat_policy: str = ""

    @nn.compact
    def __call__(self, images: jax.Array, token_idx: jax.Array | None = None,
                 token_valid: jax.Array | None = None) -> tuple[jax.Array, dict[str, Any]]:
        p = self.patch_size
        if images.shape[1] % p or images.shape[2] % p:
            raise ValueError(f"Image size {images.shape[1:3]} is not divisible by the patch size {p}.")
        x = PatchEmbed(self.width, p, self.dtype, name="patch_embed")(images)
        batch, gh, gw = images.shape[0], images.shape[1] // p, images.shape[2] // p
        if self.posemb == "sincos2d":
            pos = jnp.asarray(sincos_posemb_2d((gh, gw), self.width))[None]
        elif self.posemb == "learn":
            pos = self.param("pos_embed", trunc_normal(), (1, gh * gw, self.width))
        elif self.posemb == "none":
            pos = jnp.zeros((1, 1, self.width))
        else:
            raise ValueError(f"Unknown posemb {self.posemb!r}: expected one of {POSEMBS}.")
        x = x + pos.astype(x.dtype)
        positions = None  # for the relative position bias: 0 = class token, p + 1 = patch p
        if self.rel_pos_bias:
            positions = jnp.arange(1, gh * gw + 1)[None] if token_idx is None else token_idx + 1
        if token_idx is not None:
            x = gather_tokens(x, token_idx)
        if self.class_token:
            cls = self.param("cls_token", nn.initializers.truncated_normal(1e-6), (1, 1, self.width))
            if self.posemb == "learn":
                cls = cls + self.param("cls_pos_embed", trunc_normal(),
                                       (1, 1, self.width))
            x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, self.width)).astype(x.dtype), x], axis=1)
            if token_valid is not None:
                token_valid = jnp.concatenate([jnp.ones((batch, 1), bool), token_valid], axis=1)
            if positions is not None:
                positions = jnp.concatenate([jnp.zeros((positions.shape[0], 1), positions.dtype), positions], 1)
        x = Transformer(self.depth, self.num_heads, self.mlp_dim, self.remat, self.dtype,
                        rel_pos_grid=(gh, gw) if self.rel_pos_bias else None, layer_scale=self.layer_scale,
                        final_norm=self.final_norm, attention=self.attention, remat_policy=self.remat_policy,
                        name="encoder")(x, key_padding_mask(token_valid), positions)
        if self.class_token:
            x = x[:, 1:]
        return x, {"grid_size": (gh, gw)}


def vit_from_variant(variant: str, **kwargs: Any) -> VisionTransformer:
    """``vit_from_variant('S/16', posemb='learn')``: a ``VisionTransformer`` from the variant table."""
    return VisionTransformer(**parse_variant(variant), **kwargs)
