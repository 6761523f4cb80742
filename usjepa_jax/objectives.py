"""Pure loss functions of the three pretraining methods (no model code, no state).

- ``latent_prediction_loss``: US-JEPA / I-JEPA. Predictions against teacher embeddings at the target patches,
  Smooth-L1 (beta 1) by default, ``l1`` (SALT stage 2) or ``l2``; targets optionally layer-normalised over the
  feature dim without affine (I-JEPA does it; US-JEPA does not say: a switch, default on), and optionally
  standardised per feature over the batch's valid target patches (``standardize_targets``, off by default; our
  addition for briefly trained teachers whose tokens share one dominant direction, see ``standardize_features``).
- ``pixel_targets`` + ``reconstruction_loss``: SALT stage 1 / MAE-style. Per-patch normalised pixels at the
  target patches, MSE; or targets that average the speckle away (``loss.pixel_target``: low-passed pixels, or
  MaskFeat's histograms of oriented gradients).
- ``ema_update`` / ``ema_momentum``: the I-JEPA EMA teacher (momentum linear 0.996 -> 1.0 over training).

Static-shape note: target blocks arrive padded to a fixed length with a validity mask (see ``masks.py``). The
loss is the mean over the valid patches of each block, then the mean over blocks and images, i.e. "averaged over
the target blocks" (docs/method.md); with unpadded equal-size blocks this equals I-JEPA's plain mean.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from usjepa_jax.config import LOSS_KINDS, PIXEL_TARGETS
from usjepa_jax.models.vit import patchify  # pixel targets in the patch embedding's order


def elementwise_loss(pred: jax.Array, target: jax.Array, kind: str) -> jax.Array:
    """Per-element regression loss of ``kind`` in ``LOSS_KINDS``; Smooth-L1 uses beta = 1 (PyTorch default)."""
    diff = pred - target
    if kind == "smooth_l1":
        abs_diff = jnp.abs(diff)
        return jnp.where(abs_diff < 1.0, 0.5 * diff**2, abs_diff - 0.5)
    if kind == "l1":
        return jnp.abs(diff)
    if kind == "l2":
        return diff**2
    raise ValueError(f"Unknown loss kind {kind!r}: expected one of {LOSS_KINDS}.")


def layer_norm_no_affine(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """LayerNorm over the last axis without scale or bias (``F.layer_norm(x, (D,))`` in I-JEPA)."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.var(x, axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


def standardize_features(x: jax.Array, valid: jax.Array, eps: float = 1e-5) -> jax.Array:
    """``x [B, M, T, D]`` -> each feature at zero mean and unit variance over the valid patches of the batch.

    Why: the layer norm above works per token, so a direction that *every* token shares survives it. A briefly
    trained pixel teacher (the base config's stage 1) puts nearly all of its layer-normed output energy in such a
    shared direction, so regressing onto it is trivial and the student learns next to nothing (docs/regime.md).
    Standardising over the batch removes the shared part and weighs the directions that tell tokens apart
    equally. Statistics use the valid patches only (padding changes nothing) and the global batch (under jit
    with a sharded batch, XLA reduces across devices), and carry no gradient (the targets are constants).
    """
    w = valid.astype(x.dtype)[..., None]
    count = jnp.maximum(w.sum(), 1.0)
    mean = (x * w).sum(axis=(0, 1, 2)) / count
    var = (((x - mean) ** 2) * w).sum(axis=(0, 1, 2)) / count
    return (x - mean) * jax.lax.rsqrt(var + eps)


def blocks_with_patches(valid: jax.Array) -> jax.Array:
    """``valid [B, M, T]`` -> the number of target blocks that hold at least one valid patch (float32 scalar)."""
    return (valid.sum(axis=-1) > 0).sum().astype(jnp.float32)


def block_mean_sum(per_patch: jax.Array, valid: jax.Array) -> jax.Array:
    """``per_patch [B, M, T]`` and ``valid [B, M, T]`` -> scalar: the sum over blocks of each block's mean over
    its valid patches. A block with no valid patch (possible only with USrc masks) contributes nothing.
    Divided by ``blocks_with_patches`` of the whole batch, the sums of sequential micro-batches add up to the
    batch's ``masked_block_mean`` (train.make_train_step's accumulation)."""
    valid = valid.astype(per_patch.dtype)
    return ((per_patch * valid).sum(axis=-1) / jnp.maximum(valid.sum(axis=-1), 1.0)).sum()


def masked_block_mean(per_patch: jax.Array, valid: jax.Array) -> jax.Array:
    """``per_patch [B, M, T]`` and ``valid [B, M, T]`` -> scalar: mean over valid patches per block, then over
    blocks and images. A block with no valid patch (possible only with USrc masks) contributes nothing."""
    return block_mean_sum(per_patch, valid) / jnp.maximum(blocks_with_patches(valid), 1.0)


def prepare_latent_targets(target: jax.Array, valid: jax.Array, *, normalize_targets: bool = True,
                           standardize_targets: bool = False) -> jax.Array:
    """``target [B, M, T, D]`` as the latent loss compares it: float32, without gradient, layer-normed
    (``normalize_targets``, I-JEPA) and standardised over the valid patches of the batch (``standardize_targets``).
    The standardisation pools the batch, so it runs on the whole global batch, before any micro-batching."""
    target = jax.lax.stop_gradient(target.astype(jnp.float32))
    if normalize_targets:
        target = layer_norm_no_affine(target)
    if standardize_targets:
        target = standardize_features(target, valid)
    return target


def latent_prediction_loss(pred: jax.Array, target: jax.Array, valid: jax.Array, *, kind: str = "smooth_l1",
                           normalize_targets: bool = True, standardize_targets: bool = False) -> jax.Array:
    """``pred``, ``target``: ``[B, M, T, D]``; ``valid``: ``[B, M, T]``. Returns a float32 scalar.

    ``target`` is wrapped in ``stop_gradient``: the teacher never receives a gradient through the loss.
    """
    target = prepare_latent_targets(target, valid, normalize_targets=normalize_targets,
                                    standardize_targets=standardize_targets)
    per_patch = elementwise_loss(pred.astype(jnp.float32), target, kind).mean(axis=-1)
    return masked_block_mean(per_patch, valid)


def normalized_patch_targets(patches: jax.Array, eps: float = 1e-6) -> jax.Array:
    """MAE's per-patch normalised pixel targets: ``(x - mean) / sqrt(var + eps)`` over each patch's pixels."""
    mean = patches.mean(axis=-1, keepdims=True)
    var = patches.var(axis=-1, keepdims=True)
    return (patches - mean) / jnp.sqrt(var + eps)


HOG_BINS = 9  # unsigned orientations over 0-180 degrees, MaskFeat's (Wei et al., 2022) and Dalal & Triggs' choice
HOG_CELLS = 2  # cells per patch side: 4 cells of (p/2)^2 pixels, MaskFeat's 8 px cells in its 16 px patches


def gaussian_lowpass(images: jax.Array, sigma: float) -> jax.Array:
    """``[B, H, W, C]`` blurred by a Gaussian of standard deviation ``sigma`` pixels (separable, truncated at
    3 sigma, reflected at the border). Averages the speckle's grain away and keeps the anatomy's larger shapes."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    kernel = jnp.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = jnp.pad(images.astype(jnp.float32), ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="reflect")
    size = 2 * radius + 1
    x = sum(kernel[i] * x[:, i:i + x.shape[1] - size + 1] for i in range(size))  # along H
    return sum(kernel[i] * x[:, :, i:i + x.shape[2] - size + 1] for i in range(size))  # along W


def hog_targets(images: jax.Array, patch_size: int, eps: float = 1e-6) -> jax.Array:
    """``[B, H, W, C]`` -> ``[B, N, HOG_CELLS^2 * HOG_BINS]``: per patch, histograms of oriented gradients
    (MaskFeat's targets): central-difference gradients of the channel mean, each pixel's magnitude added to the bin
    of its unsigned orientation, summed over ``HOG_CELLS x HOG_CELLS`` cells of the patch, the patch's histograms
    L2-normalised together (a patch without gradient is all zero). Local edge structure, independent of the
    patch's brightness and contrast; speckle adds a broad floor to every bin."""
    if patch_size % HOG_CELLS:
        raise ValueError(f"HOG targets need a patch size divisible by {HOG_CELLS} cells, got {patch_size}")
    x = images.astype(jnp.float32).mean(axis=-1)
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    gy = padded[:, 2:, 1:-1] - padded[:, :-2, 1:-1]
    gx = padded[:, 1:-1, 2:] - padded[:, 1:-1, :-2]
    angle = jnp.mod(jnp.arctan2(gy, gx), jnp.pi)  # unsigned: [0, pi)
    bins = jnp.clip(jnp.floor(angle / (jnp.pi / HOG_BINS)).astype(jnp.int32), 0, HOG_BINS - 1)
    votes = jax.nn.one_hot(bins, HOG_BINS, dtype=jnp.float32) * jnp.hypot(gx, gy)[..., None]  # [B, H, W, bins]
    batch, height, width = x.shape
    cell = patch_size // HOG_CELLS
    hist = votes.reshape(batch, height // cell, cell, width // cell, cell, HOG_BINS).sum(axis=(2, 4))
    g_h, g_w = height // patch_size, width // patch_size  # the cells of a patch next to each other, row-major
    hist = hist.reshape(batch, g_h, HOG_CELLS, g_w, HOG_CELLS, HOG_BINS).transpose(0, 1, 3, 2, 4, 5)
    hist = hist.reshape(batch, g_h * g_w, HOG_CELLS * HOG_CELLS * HOG_BINS)
    return hist / jnp.sqrt(jnp.sum(hist**2, axis=-1, keepdims=True) + eps)


def pixel_target_width(kind: str, patch_size: int, channels: int = 1) -> int:
    """The width of one patch's target of ``pixel_targets(kind=...)``."""
    return HOG_CELLS * HOG_CELLS * HOG_BINS if kind == "hog" else patch_size * patch_size * channels


def pixel_targets(images: jax.Array, patch_size: int, *, normalize_pixels: bool = True, kind: str = "pixels",
                  lowpass_sigma: float = 2.0) -> jax.Array:
    """``[B, H, W, C]`` float images -> ``[B, N, D]`` float32 reconstruction targets of every patch: its pixels
    (``kind='pixels'``, ``D = p*p*C``), its pixels after a Gaussian low-pass of ``lowpass_sigma`` pixels
    (``'lowpass'``: the anatomy without the speckle's grain), both per-patch normalised (MAE) when
    ``normalize_pixels``; or its histograms of oriented gradients (``'hog'``, ``hog_targets``, already normalised)."""
    if kind not in PIXEL_TARGETS:
        raise ValueError(f"pixel target {kind!r} is not one of {PIXEL_TARGETS}")
    if kind == "hog":
        return hog_targets(images, patch_size)
    images = images.astype(jnp.float32)
    if kind == "lowpass":
        images = gaussian_lowpass(images, lowpass_sigma)
    patches = patchify(images, patch_size)
    return normalized_patch_targets(patches) if normalize_pixels else patches


def reconstruction_loss(pred: jax.Array, target: jax.Array, valid: jax.Array) -> jax.Array:
    """MSE between ``pred`` and ``target`` ``[B, M, T, D]`` at the valid patches ``[B, M, T]`` (the pixel loss)."""
    per_patch = elementwise_loss(pred.astype(jnp.float32), target.astype(jnp.float32), "l2").mean(axis=-1)
    return masked_block_mean(per_patch, valid)


def gather_patches(tokens: jax.Array, idx: jax.Array) -> jax.Array:
    """``tokens [B, N, D]`` at the patch indices ``idx [B, M, T]`` -> ``[B, M, T, D]`` (the target blocks)."""
    b, m, t = idx.shape
    return jnp.take_along_axis(tokens, idx.reshape(b, m * t, 1), axis=1).reshape(b, m, t, tokens.shape[-1])


def ema_momentum(step: jax.Array, total_steps: int, start: float = 0.996, end: float = 1.0) -> jax.Array:
    """I-JEPA's EMA momentum: linear from ``start`` at step 0 to ``end`` at ``total_steps``."""
    frac = jnp.clip(step / max(total_steps, 1), 0.0, 1.0)
    return start + (end - start) * frac


def ema_update(target_params, online_params, momentum: jax.Array):
    """``target <- momentum * target + (1 - momentum) * online``, leaf by leaf."""
    return jax.tree.map(lambda t, o: momentum * t + (1.0 - momentum) * o, target_params, online_params)
