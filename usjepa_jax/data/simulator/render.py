"""Rendering: scatterers through the PSF (IQ), attenuation and TGC, log compression, scan conversion, overlays.

``render(anatomy_seed, speckle_seed, config, *, acquisition_seed=None, scene=None, return_envelope=False)``
returns a dict: ``image`` uint8 ``[S, S]`` (B-mode, black outside the scan), ``scan_mask`` bool ``[S, S]``,
``segmentation`` uint8 ``[S, S]`` (a tissue code per pixel, index into ``SEGMENTATION_NAMES``), ``label`` (the
lesion class, index into ``CLASS_NAMES``), ``labels`` (one entry per task of ``TASK_CLASSES``, -1 where the task
does not apply) and ``params`` (the acquisition and anatomy parameters). ``scene`` optionally fixes any of
``{"organ", "lesion", "margin", "grade"}``; the draws of every other quantity do not depend on which are fixed.
Each key and the physics in full: ``docs/simulator.md``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.fft

from usjepa_jax.data.seeding import derive_seed
from usjepa_jax.data.simulator.acquisition import (Grid, ScanConverter, ScanGeometry, acquisition_grid,
                                                   acquisition_points, axial_fwhm_mm, highest_frequency,
                                                   lateral_fwhm_mm)
from usjepa_jax.data.simulator.config import CLASS_NAMES, LESION_SEGMENT, MARGINS, ORGANS, SEG, SimulatorConfig
from usjepa_jax.data.simulator.phantoms import phantom_maps
from usjepa_jax.data.simulator.scenes import Anatomy, sample_anatomy


def _gaussian_transfer(n: int, sigma: np.ndarray | float) -> np.ndarray:
    """``exp(-2 pi^2 sigma^2 k^2)`` on the ``fft`` bins of length ``n`` (sigma in samples; broadcast). Bins ``k``
    and ``-k`` hold the same value: it is evaluated on ``|k| <= 1/2`` and mirrored (half the exponentials)."""
    half = n // 2 + 1
    k = np.abs(scipy.fft.fftfreq(n)[:half]).astype(np.float32)
    transfer = np.exp(np.float32(-2 * np.pi**2) * (np.asarray(sigma, np.float32)[..., None] * k) ** 2)
    out = np.empty(transfer.shape[:-1] + (n,), np.float32)
    out[..., :half] = transfer
    out[..., half:] = transfer[..., n - half:0:-1]  # bin i > n/2 has the frequency of bin n - i
    return out


def _lateral_sigma_lines(geometry: ScanGeometry, grid: Grid, pulse: dict) -> np.ndarray:
    """Per range sample, the lateral PSF sigma in beam lines ``[A]``."""
    z = (np.arange(grid.axial) + 0.5) * grid.dz_mm
    fwhm = lateral_fwhm_mm(z, pulse["frequency_mhz"], pulse["f_number"], pulse["focal_mm"],
                           geometry.probe.aperture_mm)
    spacing = grid.dline * (geometry.radius_mm + z) if geometry.is_fan else grid.dline
    return (fwhm / 2.3548 / spacing).astype(np.float32)


def iq_signal(echo: np.ndarray, geometry: ScanGeometry, grid: Grid, pulse: dict, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
    """Complex baseband (IQ) signal ``[A, L]`` of a scatterer field of mean power ``echo``, and the unit white
    field it was made from. Circular Gaussian scatterers convolved with the PSF (axial Gaussian, per-row lateral
    Gaussian, both in the Fourier domain of a grid padded by 3 PSF sigmas so nothing wraps around)."""
    a, lines = echo.shape
    sigma_lat = _lateral_sigma_lines(geometry, grid, pulse)
    sigma_ax = axial_fwhm_mm(pulse["frequency_mhz"], pulse["bandwidth"]) / 2.3548 / grid.dz_mm
    pa = scipy.fft.next_fast_len(a + math.ceil(3 * sigma_ax))
    white = rng.standard_normal((a, lines, 2), dtype=np.float32).view(np.complex64)[..., 0]
    white *= np.float32(np.sqrt(0.5))
    scatterers = white * np.sqrt(echo)
    # Lateral pass, per row padded by 3 of its PSF sigmas: rows whose PSF is wider than a third of the scan (a
    # sector's first millimetres, where every beam line passes near the apex) get their own, longer FFT, so the
    # other rows are not padded to their width (a sector's grid would otherwise be padded ~10x).
    wide = np.ceil(3 * sigma_lat) > lines
    lateral = np.empty((a, lines), np.complex64)
    for rows in (~wide, wide) if wide.any() else (slice(None),):
        sigma = sigma_lat[rows]
        if not sigma.size:
            continue
        pl = scipy.fft.next_fast_len(lines + math.ceil(3 * float(sigma.max())))
        lat = _gaussian_transfer(pl, sigma)  # [rows, PL]
        lat *= (np.float32(1) / np.sqrt(np.mean(lat**2, axis=1, keepdims=True)))  # unit energy per row
        # Zero padding by the FFTs' ``n``.
        spectrum = scipy.fft.fft(scatterers[rows], n=pl, axis=1, overwrite_x=True)
        spectrum *= lat
        lateral[rows] = scipy.fft.ifft(spectrum, axis=1, overwrite_x=True)[:, :lines]
    ax = _gaussian_transfer(pa, sigma_ax)
    ax *= np.float32(1 / np.sqrt(np.mean(ax**2)))
    spectrum = scipy.fft.fft(lateral, n=pa, axis=0)
    spectrum *= ax[:, None]
    out = scipy.fft.ifft(spectrum, axis=0, overwrite_x=True)[:a]
    return np.ascontiguousarray(out, np.complex64), white


def envelope(echo: np.ndarray, geometry: ScanGeometry, grid: Grid, pulse: dict, rng: np.random.Generator
             ) -> np.ndarray:
    """Envelope ``[A, L]`` (float32), before attenuation: the magnitude of the IQ signal."""
    return np.abs(iq_signal(echo, geometry, grid, pulse, rng)[0])


def psf_fwhm_mm(anatomy_or_geometry, pulse: dict | None = None) -> dict[str, float]:
    """The theoretical PSF: axial FWHM and lateral FWHM at the focus, in mm."""
    geometry = getattr(anatomy_or_geometry, "geometry", anatomy_or_geometry)
    pulse = pulse if pulse is not None else anatomy_or_geometry.pulse
    return dict(axial=axial_fwhm_mm(pulse["frequency_mhz"], pulse["bandwidth"]),
                lateral=float(lateral_fwhm_mm(pulse["focal_mm"], pulse["frequency_mhz"], pulse["f_number"],
                                              pulse["focal_mm"], geometry.probe.aperture_mm)))


def log_compress(iq: np.ndarray, display: dict) -> np.ndarray:
    """Grey levels (float32, 0-255) of ``20 log10 |iq| + gain + 0.55 DR`` over the dynamic range ``DR``."""
    power = iq.real**2
    power += iq.imag**2
    dr = display["dynamic_range_db"]
    db = 10 * np.log10(np.maximum(power, np.float32(1e-20)))
    db += np.float32(display["gain_db"] + 0.55 * dr)
    return np.clip(db * np.float32(255.0 / dr), 0.0, 255.0, out=db)


def render(anatomy_seed: int, speckle_seed: int, config: SimulatorConfig = SimulatorConfig(), *,
           return_envelope: bool = False, acquisition_seed: int | None = None,
           scene: dict | None = None) -> dict[str, Any]:
    """One B-mode image (the module docstring lists the returned keys).

    ``acquisition_seed``: when given, the scanner settings (probe, depth, pulse, display, overlay) come from this
    seed instead of the anatomy seed, and only the scene from ``anatomy_seed`` (laid out for that probe's field
    of view): several anatomies scanned with one probe and one preset (the speckle-invariance set).
    ``return_envelope`` adds the envelope ``[A, L]`` on the acquisition grid before attenuation and log
    compression, and ``grid`` (the ``Grid``: spacings in mm / radians).
    """
    anatomy = sample_anatomy(anatomy_seed, config, scene, acquisition_seed)
    geometry, pulse, display = anatomy.geometry, anatomy.pulse, anatomy.display
    grid = acquisition_grid(geometry, pulse, config.samples_per_cell)
    size = config.image_size
    x, z, d = acquisition_points(geometry, grid)
    seg_acq, echo, atten = phantom_maps(anatomy.regions, x, z, d)
    rng = np.random.default_rng(derive_seed(speckle_seed, 2))
    iq, white = iq_signal(echo, geometry, grid, pulse, rng)

    # Two-way attenuation along each beam (dB = 2 f int alpha dz, z in cm) minus the TGC, as an amplitude gain.
    f = pulse["frequency_mhz"]
    step = np.float32(-2 * f * grid.dz_mm / 10 * np.log(10) / 20)  # dB/cm/MHz -> nepers of amplitude per sample
    log_gain = np.cumsum(atten, axis=0)
    log_gain -= np.float32(0.5) * atten  # attenuation up to the sample's centre
    log_gain *= step
    depth_cm = ((np.arange(grid.axial, dtype=np.float32) + 0.5) * np.float32(grid.dz_mm / 10))[:, None]
    tgc_alpha = pulse["tgc_compensation"] * anatomy.host["normal_atten"]  # set for the organ's normal tissue
    tgc = np.float32(2 * f * tgc_alpha * np.log(10) / 20) * depth_cm
    log_gain += tgc
    received = iq * np.exp(log_gain)
    # Electronic noise before the TGC: the white field shifted by half the grid (independent of the local signal).
    noise = np.roll(white, (grid.axial // 2, grid.lines // 2), axis=(0, 1))
    noise *= np.float32(10 ** (display["noise_db"] / 20)) * np.exp(tgc)
    received += noise
    compressed = log_compress(received, display)
    convert = ScanConverter(geometry, grid, size)
    mask = convert.mask
    image = convert(compressed)
    segmentation = convert.nearest_sample(seg_acq, SEG["outside"])
    if anatomy.lesion is not None:  # + pixels whose footprint is >= 50% lesion (or the best, for tiny lesions)
        code = LESION_SEGMENT[anatomy.label]
        lesion = seg_acq == code
        rows, cols = np.flatnonzero(lesion.any(axis=1)), np.flatnonzero(lesion.any(axis=0))
        reach_i = math.ceil(convert.axial_width * convert.k) + 2 * convert.k
        if len(rows):  # filter only the lesion's block of the grid (and its filter reach)
            reach_j = math.ceil(float(convert.full_lateral_width[rows].max())) + 2
            block = (slice(max(0, rows[0] - reach_i), rows[-1] + 1 + reach_i),
                     slice(max(0, cols[0] - reach_j), cols[-1] + 1 + reach_j))
            coverage = convert(lesion.astype(np.float32), *block)
            threshold = min(0.5, 0.8 * float(coverage.max()))  # a lesion smaller than a pixel keeps its best
            segmentation[(coverage >= threshold) & mask] = code
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    if anatomy.overlay:
        image = burn_in_overlays(image, anatomy, np.random.default_rng(derive_seed(anatomy_seed, 3)))
    labels = dict(lesion=anatomy.label, organ=anatomy.organ, margin=anatomy.margin, grade=anatomy.grade)
    psf = psf_fwhm_mm(anatomy)
    side = geometry.field_mm()[0]
    params = dict(geometry=geometry.kind, geometry_variant=(geometry.depth_mm, geometry.span), overlay=anatomy.overlay,
                  depth_mm=geometry.depth_mm, span=geometry.span, pixel_mm=side / size, grid=grid.shape,
                  axial_fwhm_mm=psf["axial"], lateral_fwhm_mm=psf["lateral"], **pulse, **display,
                  organ=ORGANS[anatomy.organ], lesion=CLASS_NAMES[anatomy.label],
                  margin=MARGINS[anatomy.margin] if anatomy.margin >= 0 else None, grade=anatomy.grade,
                  host_echo_db=anatomy.host["echo_db"], host_atten_db_cm_mhz=anatomy.host["atten"],
                  lesion_diameter_mm=anatomy.lesion["diameter_mm"] if anatomy.lesion else None,
                  lesion_contrast_db=anatomy.lesion["contrast_db"] if anatomy.lesion else None,
                  margin_low_harmonics=anatomy.lesion["harmonics"][0] if anatomy.lesion else None,
                  margin_high_harmonics=anatomy.lesion["harmonics"][1] if anatomy.lesion else None)
    out = dict(image=image, label=anatomy.label, labels=labels, segmentation=segmentation, scan_mask=mask.copy(),
               params=params)
    if return_envelope:
        out["envelope"], out["grid"] = np.abs(iq), grid
    return out


def render_homogeneous(speckle_seed: int, config: SimulatorConfig = SimulatorConfig(),
                       geometry: ScanGeometry = ScanGeometry("linear", 40.0, 38.0), **pulse_overrides: float
                       ) -> tuple[np.ndarray, Grid, dict]:
    """Envelope ``[A, L]`` of a homogeneous phantom (0 dB everywhere, no attenuation), its grid and pulse.

    For physics checks: fully developed speckle is Rayleigh distributed (mean/std = 1.91) and its grain size
    follows the PSF. The pulse defaults to the middle of the config's ranges at the probe's highest frequency;
    ``frequency_mhz``, ``bandwidth``, ``f_number``, ``focal_mm`` can be overridden.
    """
    pulse = dict(frequency_mhz=highest_frequency(geometry.probe, geometry.depth_mm),
                 bandwidth=float(np.mean(config.fractional_bandwidth)), f_number=float(np.mean(config.f_number)),
                 focal_mm=geometry.depth_mm / 2)
    pulse.update(pulse_overrides)
    grid = acquisition_grid(geometry, pulse, config.samples_per_cell)
    rng = np.random.default_rng(derive_seed(speckle_seed, 2))
    return envelope(np.ones(grid.shape, np.float32), geometry, grid, pulse, rng), grid, pulse


def bmode_homogeneous(speckle_seed: int, config: SimulatorConfig = SimulatorConfig(),
                      geometry: ScanGeometry = ScanGeometry("linear", 40.0, 38.0), **pulse_overrides: float
                      ) -> tuple[np.ndarray, np.ndarray, float]:
    """The B-mode image (uint8 ``[S, S]``) of ``render_homogeneous``'s scan at ``config.image_size``, its scan
    mask and the pixel size in mm: log-compressed (60 dB, no gain, no noise) and scan-converted as ``render``."""
    env, grid, _ = render_homogeneous(speckle_seed, config, geometry, **pulse_overrides)
    compressed = log_compress(env.astype(np.complex64), dict(dynamic_range_db=60.0, gain_db=0.0))
    convert = ScanConverter(geometry, grid, config.image_size)
    image, mask = convert(compressed), convert.mask
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask, geometry.field_mm()[0] / config.image_size


def burn_in_overlays(image: np.ndarray, anatomy: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Text, a depth ruler and (when there is a lesion) calipers, burned into the pixels as scanners do."""
    from PIL import Image, ImageDraw

    size = image.shape[0]
    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    level = int(rng.integers(180, 256))
    name = {"linear": "L12-5", "curvilinear": "C5-1", "sector": "P4-2"}[anatomy.geometry.kind]
    draw.text((2, 1), f"{name} {anatomy.pulse['frequency_mhz']:.1f}MHz {int(rng.integers(30, 99))}%", fill=level)
    side, top, _ = anatomy.geometry.field_mm()
    for cm in range(int(anatomy.geometry.depth_mm // 10) + 1):  # depth ruler on the right edge, ticks per cm
        y = int((cm * 10 - top) / side * size)
        if 0 <= y < size:
            draw.line([(size - 4 - (3 if cm % 5 == 0 else 0), y), (size - 2, y)], fill=level)
    if anatomy.lesion is not None:
        cx, cz, r = anatomy.lesion["x_mm"], anatomy.lesion["z_mm"], anatomy.lesion["diameter_mm"] / 2
        for px in (cx - r, cx + r):
            u, v = int((px / side + 0.5) * size), int((cz - top) / side * size)
            draw.line([(u - 3, v), (u + 3, v)], fill=level)
            draw.line([(u, v - 3), (u, v + 3)], fill=level)
    return np.asarray(pil, dtype=np.uint8)
