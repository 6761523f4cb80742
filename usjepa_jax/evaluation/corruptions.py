"""Test-time corruptions of the robustness evaluation (docs/method.md), on model-resolution uint8 images.

Severity ``e`` in {0, 1, 2, 3}; ``e = 0`` returns the image unchanged (the clean reference).

- ``blur``: Gaussian blur, sigma = e pixels, kernel 2 * floor(2e) + 1 taps (radius floor(2e)), whole image.
- ``contrast``: depletion toward the median inside the scan region, ``m + alpha * (I - m)`` with alpha 0.7 / 0.5 /
  0.3 for e = 1 / 2 / 3; outside the scan region unchanged.
- ``speckle``: multiplicative correlated speckle ``I * (1 + eta * K)``: K is white Gaussian noise smoothed with a
  Gaussian of ``correlation`` pixels and rescaled to unit variance, eta = 0.35 e (so the multiplicative noise has
  standard deviation sigma_eta = 0.35 e); inside the scan region only.

Results are rounded and clipped back to uint8, like a stored image.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.ndimage

from usjepa_jax.data.seeding import derive_seed

CONTRAST_ALPHA = {1: 0.7, 2: 0.5, 3: 0.3}
SPECKLE_SIGMA_PER_SEVERITY = 0.35


def _check(severity: int) -> int:
    if severity not in (0, 1, 2, 3):
        raise ValueError(f"corruption severity {severity!r}: expected 0, 1, 2 or 3.")
    return int(severity)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _squeeze(image: np.ndarray) -> tuple[np.ndarray, bool]:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        return image[..., 0], True
    if image.ndim != 2:
        raise ValueError(f"expected a grayscale image [H, W] or [H, W, 1], got shape {image.shape}")
    return image, False


def gaussian_blur(image: np.ndarray, severity: int) -> np.ndarray:
    e = _check(severity)
    img, channel = _squeeze(image)
    if e == 0:
        return np.asarray(image).copy()
    out = _to_uint8(scipy.ndimage.gaussian_filter(img.astype(np.float32), sigma=float(e),
                                                  radius=math.floor(2 * e), mode="reflect"))
    return out[..., None] if channel else out


def contrast_depletion(image: np.ndarray, scan_mask: np.ndarray, severity: int) -> np.ndarray:
    e = _check(severity)
    img, channel = _squeeze(image)
    if e == 0:
        return np.asarray(image).copy()
    inside = np.asarray(scan_mask, bool)
    x = img.astype(np.float32)
    median = float(np.median(x[inside])) if inside.any() else float(np.median(x))
    out = _to_uint8(np.where(inside, median + CONTRAST_ALPHA[e] * (x - median), x))
    return out[..., None] if channel else out


def correlated_speckle(image: np.ndarray, scan_mask: np.ndarray, severity: int, rng: np.random.Generator,
                       correlation: float = 1.5) -> np.ndarray:
    e = _check(severity)
    img, channel = _squeeze(image)
    if e == 0:
        return np.asarray(image).copy()
    k = scipy.ndimage.gaussian_filter(rng.standard_normal(img.shape).astype(np.float32), correlation)
    k /= k.std() + 1e-8
    x = img.astype(np.float32)
    out = _to_uint8(np.where(np.asarray(scan_mask, bool), x * (1.0 + SPECKLE_SIGMA_PER_SEVERITY * e * k), x))
    return out[..., None] if channel else out


def corrupt(name: str, image: np.ndarray, scan_mask: np.ndarray, severity: int, rng: np.random.Generator,
            correlation: float = 1.5) -> np.ndarray:
    """One corruption by name (``blur`` | ``contrast`` | ``speckle``)."""
    if name == "blur":
        return gaussian_blur(image, severity)
    if name == "contrast":
        return contrast_depletion(image, scan_mask, severity)
    if name == "speckle":
        return correlated_speckle(image, scan_mask, severity, rng, correlation)
    raise ValueError(f"unknown corruption {name!r}: expected blur, contrast or speckle.")


def corrupt_batch(name: str, images: np.ndarray, scan_masks: np.ndarray, severity: int, seed: int,
                  correlation: float = 1.5) -> np.ndarray:
    """``images [N, H, W(, 1)]`` -> corrupted copies; the speckle of image i depends on (seed, severity, i) only."""
    return np.stack([corrupt(name, img, m, severity, np.random.default_rng(derive_seed(seed, severity, i)),
                             correlation) for i, (img, m) in enumerate(zip(images, scan_masks))])
