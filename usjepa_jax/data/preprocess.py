"""Preprocessing of real ultrasound frames (the paper's recipe), each step a switch of :class:`PreprocessConfig`.

``preprocess_frame(frame, config, scan_mask=None) -> (image uint8 [H, W], scan_mask bool [H, W])``:

1. **to uint8**: any integer/float frame is mapped linearly from its min..max to 0..255 (uint8 is kept as is);
   the percentile rescaling (step 5) sets the final contrast anyway.
2. **coloured annotations** (``inpaint``): on RGB frames, pixels whose channels differ (``max - min >
   color_threshold``) are coloured marks (calipers, Doppler boxes, text in colour). When they cover less than
   ``inpaint_max_fraction`` (5%) of the frame they are inpainted on the grey image: nearest known pixel
   (``scipy.ndimage.distance_transform_edt`` indices), then ``inpaint_iterations`` rounds of neighbour averaging
   restricted to the marked pixels (diffusion). Above 5% (colour Doppler, a photo) the frame is only converted.
3. **grayscale** (``grayscale``): ITU-R 601 luma ``0.299 R + 0.587 G + 0.114 B``; with the switch off, RGB frames
   keep their first channel (the data is grey-scale ultrasound; the model takes one channel).
4. **scan region** (``detect_scan_region``, only when no mask is given): the fan/rectangle of the image without the
   dark border and burned-in UI (inside ``region`` when the file gives a bound, e.g. DICOM ultrasound regions;
   without detection the bound is the region): smooth (median 5x5 blurs speckle holes), threshold at
   ``region_threshold``, binary opening with a disk of radius ~1.5% of the image (cuts thin text, rulers and lines
   touching the fan), largest connected component, hole filling (anechoic structures inside the fan), and a final
   opening. Without detection (and no mask) the whole frame is the region.
5. **percentile rescaling** (``rescale_percentiles``): the ``p_lo``..``p_hi`` percentiles (2-98) inside the scan
   region are mapped to 0..255 (clipped); outside the region is set to 0.
6. **crop** (``crop_to_scan_region``): to the region's bounding box, padded with zeros to a square (centred), so
   the final resize keeps the aspect ratio.
7. **resize** (``size``): bilinear image, nearest mask, to ``size x size`` (None keeps the frame's size).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import scipy.ndimage as ndi
from PIL import Image


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    grayscale: bool = True
    inpaint: bool = True
    inpaint_max_fraction: float = 0.05
    inpaint_iterations: int = 20
    color_threshold: int = 30  # max-min channel difference (0..255) above which a pixel counts as coloured
    detect_scan_region: bool = True
    region_threshold: int = 12  # grey level (0..255, after smoothing) separating the scan from the dark border
    region_opening: float = 0.015  # opening radius as a fraction of the image's larger side
    rescale_percentiles: tuple[float, float] | None = (2.0, 98.0)
    crop_to_scan_region: bool = True
    size: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> PreprocessConfig:
        d = dict(d or {})
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"preprocess: unknown keys {sorted(unknown)}; known: {sorted(fields)}.")
        if d.get("rescale_percentiles") is not None:
            d["rescale_percentiles"] = tuple(float(v) for v in d["rescale_percentiles"])
        return cls(**d)


def default_preprocess_dict() -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(PreprocessConfig()).items()}


# ------------------------------------------------------------------------------------------------ steps
def to_uint8(frame: np.ndarray) -> np.ndarray:
    """Linear min..max -> 0..255 (per frame) for anything that is not uint8 already; NaNs become 0."""
    frame = np.asarray(frame)
    if frame.dtype == np.uint8:
        return frame
    if frame.dtype == bool:
        return frame.astype(np.uint8) * 255
    x = np.nan_to_num(frame.astype(np.float64))
    lo, hi = float(x.min(initial=0.0)), float(x.max(initial=0.0))
    if frame.size:
        lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros(frame.shape, np.uint8)
    return np.clip(np.rint((x - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def luma(rgb: np.ndarray) -> np.ndarray:
    x = rgb[..., :3].astype(np.float32)
    return np.clip(np.rint(x @ np.array([0.299, 0.587, 0.114], np.float32)), 0, 255).astype(np.uint8)


def color_mask(rgb: np.ndarray, threshold: int = 30) -> np.ndarray:
    """Pixels whose colour channels differ by more than ``threshold`` (coloured annotations)."""
    x = rgb[..., :3].astype(np.int16)
    return (x.max(-1) - x.min(-1)) > threshold


def inpaint(gray: np.ndarray, mask: np.ndarray, iterations: int = 20) -> np.ndarray:
    """Fill ``mask`` pixels from their surroundings: nearest known pixel, then masked neighbour averaging."""
    if not mask.any():
        return gray
    if mask.all():
        return np.zeros_like(gray)
    _, (rows, cols) = ndi.distance_transform_edt(mask, return_indices=True)
    x = gray[rows, cols].astype(np.float32)
    kernel = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], np.float32) / 4
    for _ in range(iterations):
        x = np.where(mask, ndi.convolve(x, kernel, mode="nearest"), x)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _disk(radius: int) -> np.ndarray:
    r = max(int(radius), 1)
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    return x * x + y * y <= r * r


def detect_scan_region(gray: np.ndarray, threshold: int = 12, opening: float = 0.015,
                       max_side: int = 256) -> np.ndarray:
    """The scan region (bool ``[H, W]``) of a grey frame; see the module docstring, step 4. Frames larger than
    ``max_side`` are analysed at a reduced size (box filter) and the mask brought back (nearest)."""
    h, w = gray.shape
    if max(h, w) > max_side:
        f = -(-max(h, w) // max_side)
        small = np.asarray(Image.fromarray(gray).reduce(f))
        mask = detect_scan_region(small, threshold, opening, max_side)
        return np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((w, h), Image.NEAREST)) > 0
    smooth = ndi.median_filter(gray, size=5)
    region = smooth > threshold
    disk = _disk(round(opening * max(h, w)))
    region = ndi.binary_opening(region, structure=disk)
    labels, n = ndi.label(region)
    if n == 0:
        return np.ones_like(gray, bool)  # nothing bright: keep the frame rather than drop it
    sizes = np.bincount(labels.ravel())[1:]
    region = labels == (1 + int(np.argmax(sizes)))
    region = ndi.binary_fill_holes(region)
    region = ndi.binary_opening(region, structure=disk)
    if not region.any():
        return np.ones_like(gray, bool)
    return region


def rescale_intensity(gray: np.ndarray, mask: np.ndarray, lo: float = 2.0, hi: float = 98.0) -> np.ndarray:
    """Map the ``lo``..``hi`` percentiles inside ``mask`` to 0..255 (clipped); 0 outside."""
    inside = gray[mask]
    if inside.size == 0:
        return np.zeros_like(gray)
    p_lo, p_hi = np.percentile(inside, [lo, hi])
    if p_hi <= p_lo:
        out = gray.astype(np.float32) - p_lo + 128.0  # flat region: keep it, centred
    else:
        out = (gray.astype(np.float32) - p_lo) * (255.0 / (p_hi - p_lo))
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return np.where(mask, out, 0).astype(np.uint8)


def crop_square(gray: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop to the mask's bounding box and pad with zeros to a centred square."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return gray, mask
    gray = gray[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    mask = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = gray.shape
    s = max(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    out_g, out_m = np.zeros((s, s), np.uint8), np.zeros((s, s), bool)
    out_g[top:top + h, left:left + w] = gray
    out_m[top:top + h, left:left + w] = mask
    return out_g, out_m


def resize_square(array: np.ndarray, size: int, resample: int = Image.BILINEAR) -> np.ndarray:
    """``array`` (``[H, W]`` or ``[H, W, C]``, uint8) resized to ``size x size`` by PIL's ``resample`` filter
    (``Image.BILINEAR`` for images, ``Image.NEAREST`` for masks and label maps); as it is when already that size.

    The one resize rule of the project: preprocessing, the pipeline and the evaluation tasks all resize through it.
    """
    if array.shape[:2] == (size, size):
        return array
    return np.asarray(Image.fromarray(array).resize((size, size), resample))


def resize(gray: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    gray = resize_square(gray, size, Image.BILINEAR)
    if mask.shape != (size, size):
        mask = resize_square(mask.astype(np.uint8), size, Image.NEAREST) > 0
    return np.where(mask, gray, 0).astype(np.uint8), mask


# ------------------------------------------------------------------------------------------------ all steps
def preprocess_frame(frame: np.ndarray, config: PreprocessConfig = PreprocessConfig(),
                     scan_mask: np.ndarray | None = None, region: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """One decoded frame (``[H, W]`` or ``[H, W, C]``, any dtype; RGB if C >= 3) -> (uint8 image, bool mask).

    ``scan_mask``: the scan region as given (no detection); ``region``: a bound on it (bool ``[H, W]``)."""
    gray, mask, _ = preprocess_with_labels(frame, None, config, scan_mask, region)
    return gray, mask


def preprocess_with_labels(frame: np.ndarray, labels: np.ndarray | None, config: PreprocessConfig = PreprocessConfig(),
                           scan_mask: np.ndarray | None = None, region: np.ndarray | None = None
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``preprocess_frame``, and a per-pixel label map (a segmentation mask, class indices ``[H, W]``) taken
    through the same geometry: the same crop, padding (label 0) and resize (nearest), so it stays aligned with
    the image."""
    frame = np.asarray(frame)
    if frame.ndim == 3 and frame.shape[-1] == 1:
        frame = frame[..., 0]
    if frame.ndim == 3 and frame.shape[-1] == 2:  # grey + alpha
        frame = frame[..., 0]
    if frame.ndim not in (2, 3):
        raise ValueError(f"expected a 2-D frame (optionally with channels), got shape {frame.shape}")
    frame = to_uint8(frame)
    if frame.ndim == 3:
        rgb = frame[..., :3]
        gray = luma(rgb) if config.grayscale else np.ascontiguousarray(rgb[..., 0])
        if config.inpaint:
            marks = color_mask(rgb, config.color_threshold)
            if 0 < marks.mean() < config.inpaint_max_fraction:
                gray = inpaint(gray, marks, config.inpaint_iterations)
    else:
        gray = frame
    if scan_mask is not None:
        mask = np.asarray(scan_mask)
        if mask.ndim == 3:
            mask = mask[..., 0]
        if mask.shape != gray.shape:
            mask = np.asarray(Image.fromarray((mask > 0).astype(np.uint8)).resize(gray.shape[::-1], Image.NEAREST))
        mask = mask > 0
    elif region is not None and region.shape != gray.shape:
        raise ValueError(f"scan-region bound of shape {region.shape} for a frame of shape {gray.shape}")
    elif config.detect_scan_region:
        bounded = gray if region is None else np.where(region, gray, 0).astype(np.uint8)
        mask = detect_scan_region(bounded, config.region_threshold, config.region_opening)
        if region is not None:
            mask &= region
    else:
        mask = np.ones(gray.shape, bool) if region is None else region.copy()
    if config.rescale_percentiles is not None:
        gray = rescale_intensity(gray, mask, *config.rescale_percentiles)
    else:
        gray = np.where(mask, gray, 0).astype(np.uint8)
    if labels is not None:
        labels = np.asarray(labels, np.uint8)
        if labels.shape != gray.shape:
            labels = np.asarray(Image.fromarray(labels).resize(gray.shape[::-1], Image.NEAREST))
        if config.crop_to_scan_region:
            labels, _ = crop_square(labels, mask)
        if config.size:
            labels = resize_square(labels, int(config.size), Image.NEAREST)
    if config.crop_to_scan_region:
        gray, mask = crop_square(gray, mask)
    if config.size:
        gray, mask = resize(gray, mask, int(config.size))
    return np.ascontiguousarray(gray, np.uint8), np.ascontiguousarray(mask, bool), labels
