"""Built-in synthetic ultrasound: a physics-based B-mode simulator (the default data of the project).

Pipeline of one image (DESIGN.md part C), all in float32 numpy, deterministic by seed:

1. **Phantom** (from ``anatomy_seed`` only): tissue layers with wavy boundaries (skin/fat/muscle/organ) of
   different echogenicity and attenuation, specular bright interfaces, an optional anechoic vessel, and one lesion
   whose type is the class label: none / cyst (anechoic, low attenuation -> posterior enhancement) /
   hypoechoic solid / hyperechoic solid / calcified (bright, strongly attenuating -> acoustic shadow). Gain,
   dynamic range, geometry and the pulse are drawn independently of the class, so the label is only learnable
   from anatomy, not from global brightness.
2. **Scatterers** (from ``speckle_seed`` only) on the acquisition grid (axial samples x beam lines): a Poisson
   number of Gaussian-amplitude point scatterers per cell, i.e. ``sqrt(Poisson(density)) * N(0, 1)``, scaled by
   the square root of the echogenicity (the Poisson count in its normal approximation for ``density >= 8``).
   A resolution cell of the PSF covers tens of grid cells, i.e. hundreds of scatterers: fully developed speckle.
3. **RF** = scatterers convolved with the pulse-echo PSF: laterally a Gaussian whose width grows away from the
   focal depth (``sigma(z) = sigma_f * sqrt(1 + ((z - z_f) / z_R)^2)``, applied exactly row by row in the lateral
   Fourier domain), axially a Gaussian-enveloped cosine at the centre frequency.
4. **Envelope** = magnitude of the analytic signal (not a complex-baseband shortcut): the axial convolution and
   the Hilbert transform are one multiplication in the axial Fourier domain (pulse spectrum times
   ``2 * [0 < k < 1/2]`` on the ``rfft`` bins, then a complex ``ifft`` whose zero padding is the suppressed
   negative frequencies).
5. **Attenuation and TGC**: two-way attenuation integrated along each beam line from the attenuation map (so
   cysts enhance and calcifications shadow what lies behind them), partly compensated by a time-gain curve;
   additive electronic noise (circular complex Gaussian on the received analytic signal).
6. **Log compression** to a dynamic range (dB) into uint8; **scan conversion** (bilinear, precomputed maps per
   geometry) to linear, sector (phased array) or curvilinear geometry, black outside the scan region.
7. Optional **burned-in overlays**: text, calipers around the lesion, a depth ruler.

Cost: ~4 ms of one core per 224x224 image (float32 throughout, FFT convolutions, the phantom evaluated with
table look-ups and the lesion only inside its bounding box, scan-conversion maps cached per geometry);
``benchmarks/data_throughput.py`` measures it. Determinism: every random draw comes from
``np.random.Generator(PCG64)`` seeded by ``derive_seed``; no global RNG, no threads (scipy.fft runs on one).

Units: the simulator works in grid units, not millimetres. The normalised field of view is x in [-0.5, 0.5]
(lateral), z in [0, 1] (depth); pulse period and PSF widths are in acquisition samples / beam lines, which is
what sets the speckle grain size in the final image. ``center_frequency`` is expressed as the carrier's cycles
per axial sample.

CLI: ``python -m usjepa_jax.data.synthetic --out DIR --num N [--size 224] [--seed S]`` writes a browsable sample.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.fft
import scipy.stats

CLASS_NAMES = ("none", "cyst", "hypoechoic_solid", "hyperechoic_solid", "calcified")
SEGMENTATION_NAMES = ("outside", "tissue", "fat", "muscle", "vessel", "cyst", "hypoechoic", "hyperechoic",
                      "calcification")
SEG = {name: i for i, name in enumerate(SEGMENTATION_NAMES)}
LESION_SEGMENT = {1: SEG["cyst"], 2: SEG["hypoechoic"], 3: SEG["hyperechoic"], 4: SEG["calcification"]}
GEOMETRIES = ("linear", "sector", "curvilinear")
# Discrete geometry variants (so that scan-conversion maps are computed once and cached):
# linear: field width; sector: opening angle (deg); curvilinear: (apex distance above the skin, angle).
GEOMETRY_VARIANTS = {"linear": (0.75, 0.9), "sector": (60.0, 75.0, 90.0), "curvilinear": ((0.4, 60.0),
                                                                                        (0.7, 50.0))}


@dataclasses.dataclass(frozen=True)
class SimulatorConfig:
    """Ranges from which each image's parameters are drawn (uniformly) from its anatomy seed."""

    image_size: int = 224
    geometries: tuple[str, ...] = GEOMETRIES
    class_probs: tuple[float, ...] = (0.2, 0.2, 0.2, 0.2, 0.2)
    center_frequency: tuple[float, float] = (0.2, 0.32)  # carrier cycles per axial sample
    pulse_cycles: tuple[float, float] = (0.5, 1.0)  # Gaussian envelope sigma, in carrier periods
    lateral_sigma: tuple[float, float] = (1.6, 2.8)  # lateral PSF sigma at focus, in beam lines
    focal_depth: tuple[float, float] = (0.3, 0.7)  # normalised depth of the transmit focus
    rayleigh_depth: tuple[float, float] = (0.25, 0.5)  # depth over which the beam widens by sqrt(2)
    scatterer_density: tuple[float, float] = (8.0, 20.0)  # mean scatterers per acquisition cell
    attenuation: tuple[float, float] = (1.0, 2.5)  # nepers over the full depth (two-way), soft tissue
    tgc_compensation: tuple[float, float] = (0.6, 1.0)  # fraction of the mean attenuation the TGC undoes
    dynamic_range_db: tuple[float, float] = (45.0, 65.0)
    gain_db: tuple[float, float] = (-6.0, 6.0)
    noise_db: tuple[float, float] = (-50.0, -35.0)  # electronic noise level relative to tissue
    vessel_prob: float = 0.5
    overlay_prob: float = 0.3
    axial_oversampling: float = 1.0  # acquisition samples per output row
    line_density: float = 0.6  # beam lines per output column (sector lines fan out below)

    def __post_init__(self):
        if self.image_size < 16:
            raise ValueError(f"SimulatorConfig.image_size={self.image_size} must be at least 16.")
        unknown = set(self.geometries) - set(GEOMETRIES)
        if unknown or not self.geometries:
            raise ValueError(f"SimulatorConfig.geometries={self.geometries!r}: expected a subset of {GEOMETRIES}.")
        if len(self.class_probs) != len(CLASS_NAMES) or abs(sum(self.class_probs) - 1) > 1e-6:
            raise ValueError(f"SimulatorConfig.class_probs={self.class_probs!r}: {len(CLASS_NAMES)} "
                             "probabilities summing to 1.")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "tuple[float, float]" and not (len(value) == 2 and value[0] <= value[1]):
                raise ValueError(f"SimulatorConfig.{f.name}={value!r}: expected a (low, high) range.")

    @property
    def grid_shape(self) -> tuple[int, int]:
        """Acquisition grid (axial samples, beam lines)."""
        return (round(self.image_size * self.axial_oversampling),
                max(16, round(self.image_size * self.line_density)))


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (e.g. ``(seed, index, stream)``), identical on every machine."""
    return int(np.random.SeedSequence([int(p) % 2**63 for p in parts]).generate_state(1, np.uint64)[0] >> 1)


# ------------------------------------------------------------------------------------------------ geometry
@dataclasses.dataclass(frozen=True)
class ScanGeometry:
    kind: str
    variant: Any


@functools.lru_cache(maxsize=64)
def _acquisition_points(geometry: ScanGeometry, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised (x, z) of every acquisition sample ``[A, L]`` (beam lines are the columns)."""
    a, lines = grid
    depth = np.linspace(0.0, 1.0, a, dtype=np.float64)[:, None]
    col = np.linspace(-0.5, 0.5, lines, dtype=np.float64)[None, :]
    if geometry.kind == "linear":
        x, z = np.broadcast_to(col * geometry.variant, (a, lines)), np.broadcast_to(depth, (a, lines))
    else:
        apex, angle = (0.0, geometry.variant) if geometry.kind == "sector" else geometry.variant
        theta = np.deg2rad(angle) * col
        r = apex + depth
        x, z = r * np.sin(theta), r * np.cos(theta) - apex
    return x.astype(np.float32), z.astype(np.float32)


@functools.lru_cache(maxsize=64)
def _scan_conversion(geometry: ScanGeometry, grid: tuple[int, int], size: int):
    """Bilinear scan-conversion map: for each output pixel, 4 flat source indices and weights, and the mask."""
    a, lines = grid
    zs, xs = np.meshgrid((np.arange(size) + 0.5) / size, (np.arange(size) + 0.5) / size - 0.5, indexing="ij")
    if geometry.kind == "linear":
        half = geometry.variant / 2
        fi, fj = zs * (a - 1), (xs + half) / (2 * half) * (lines - 1)
        mask = np.abs(xs) <= half
    else:
        apex, angle = (0.0, geometry.variant) if geometry.kind == "sector" else geometry.variant
        half = np.deg2rad(angle) / 2
        r, theta = np.hypot(xs, zs + apex), np.arctan2(xs, zs + apex)
        fi, fj = (r - apex) * (a - 1), (theta + half) / (2 * half) * (lines - 1)
        mask = (r - apex <= 1.0) & (np.abs(theta) <= half) & (r >= apex)
    fi, fj = np.clip(fi, 0, a - 1 - 1e-6), np.clip(fj, 0, lines - 1 - 1e-6)
    i0, j0 = np.floor(fi).astype(np.int64), np.floor(fj).astype(np.int64)
    di, dj = (fi - i0).astype(np.float32), (fj - j0).astype(np.float32)
    idx = np.stack([i0 * lines + j0, i0 * lines + j0 + 1, (i0 + 1) * lines + j0, (i0 + 1) * lines + j0 + 1])
    w = np.stack([(1 - di) * (1 - dj), (1 - di) * dj, di * (1 - dj), di * dj]).astype(np.float32)
    nearest = np.where(di < 0.5, i0, i0 + 1) * lines + np.where(dj < 0.5, j0, j0 + 1)
    return idx.reshape(4, -1), w.reshape(4, -1) * mask.reshape(1, -1), mask, nearest.reshape(-1)


def _scan_convert(values: np.ndarray, geometry: ScanGeometry, size: int) -> np.ndarray:
    idx, w, _, _ = _scan_conversion(geometry, values.shape, size)
    flat = values.reshape(-1)
    out = w[0] * flat[idx[0]] + w[1] * flat[idx[1]] + w[2] * flat[idx[2]] + w[3] * flat[idx[3]]
    return out.reshape(size, size)


# ------------------------------------------------------------------------------------------------ phantom
def _u(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


@dataclasses.dataclass(frozen=True)
class Anatomy:
    """Everything drawn from the anatomy seed: the phantom and the acquisition settings."""

    label: int
    geometry: ScanGeometry
    layers: tuple  # ((depth, amplitude, wavelength, phase, segment, echogenicity, attenuation), ...)
    vessel: tuple | None  # (x0, z0, angle, radius)
    lesion: tuple | None  # (x, z, rx, rz, rotation, lobes, lobe_amp, lobe_phase)
    texture: tuple  # (amplitude, frequencies...) low-frequency tissue texture
    pulse: dict
    display: dict
    overlay: bool


def sample_anatomy(anatomy_seed: int, config: SimulatorConfig) -> Anatomy:
    rng = np.random.default_rng(derive_seed(anatomy_seed, 1))
    label = int(rng.choice(len(CLASS_NAMES), p=np.asarray(config.class_probs)))
    kind = config.geometries[int(rng.integers(len(config.geometries)))]
    variants = GEOMETRY_VARIANTS[kind]
    geometry = ScanGeometry(kind, variants[int(rng.integers(len(variants)))])

    # Layers from the skin down; each has a wavy upper boundary. The deepest is the organ parenchyma.
    d_fat = _u(rng, (0.05, 0.15))
    d_muscle = d_fat + _u(rng, (0.08, 0.2))
    d_organ = d_muscle + _u(rng, (0.08, 0.2))
    organ_echo = _u(rng, (0.7, 1.4))
    layers = (
        (0.0, 0.0, 1.0, 0.0, SEG["tissue"], _u(rng, (0.8, 1.5)), 1.0),
        (d_fat, _u(rng, (0.0, 0.02)), _u(rng, (0.3, 1.0)), _u(rng, (0, 6.3)), SEG["fat"], _u(rng, (0.25, 0.5)), 0.8),
        (d_muscle, _u(rng, (0.0, 0.03)), _u(rng, (0.3, 1.0)), _u(rng, (0, 6.3)), SEG["muscle"],
         _u(rng, (0.5, 0.9)), 1.2),
        (d_organ, _u(rng, (0.0, 0.04)), _u(rng, (0.4, 1.2)), _u(rng, (0, 6.3)), SEG["tissue"], organ_echo, 1.0),
    )
    vessel = None
    if rng.random() < config.vessel_prob:
        vessel = (_u(rng, (-0.3, 0.3)), _u(rng, (d_muscle, 0.85)), _u(rng, (-0.4, 0.4)), _u(rng, (0.02, 0.045)))
    lesion = None
    if label:
        small = label == 4  # calcifications are small
        rx = _u(rng, (0.02, 0.04)) if small else _u(rng, (0.05, 0.11))
        rz = rx * _u(rng, (0.6, 1.3))
        lesion = (_u(rng, (-0.22, 0.22)), _u(rng, (max(d_organ, 0.35), 0.72)), rx, rz, _u(rng, (0, np.pi)),
                  int(rng.integers(3, 7)), _u(rng, (0.0, 0.25 if label in (2, 3) else 0.08)), _u(rng, (0, 6.3)))
    texture = (_u(rng, (0.1, 0.35)),) + tuple(rng.uniform(2, 9, size=4)) + tuple(rng.uniform(0, 6.3, size=4))
    pulse = dict(frequency=_u(rng, config.center_frequency), cycles=_u(rng, config.pulse_cycles),
                 lateral_sigma=_u(rng, config.lateral_sigma), focal_depth=_u(rng, config.focal_depth),
                 rayleigh_depth=_u(rng, config.rayleigh_depth), density=_u(rng, config.scatterer_density),
                 attenuation=_u(rng, config.attenuation), tgc=_u(rng, config.tgc_compensation))
    display = dict(dynamic_range_db=_u(rng, config.dynamic_range_db), gain_db=_u(rng, config.gain_db),
                   noise_db=_u(rng, config.noise_db))
    return Anatomy(label, geometry, layers, vessel, lesion, texture, pulse, display,
                   bool(rng.random() < config.overlay_prob))


def _lesion_inside(lesion: tuple, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Boolean mask of the (lobulated) lesion at points ``(x, z)``, evaluated only inside its bounding box."""
    cx, cz, rx, rz, rot, lobes, lobe_amp, lobe_phase = lesion
    reach = max(rx, rz) * (1.0 + lobe_amp)
    dx, dz = x - np.float32(cx), z - np.float32(cz)
    candidates = np.flatnonzero((np.abs(dx) <= reach) & (np.abs(dz) <= reach))
    dx, dz = dx.reshape(-1)[candidates], dz.reshape(-1)[candidates]
    c, s = np.cos(rot), np.sin(rot)
    u, v = (c * dx + s * dz) / rx, (-s * dx + c * dz) / rz
    radius = 1.0 + lobe_amp * np.sin(lobes * np.arctan2(v, u) + lobe_phase)  # irregular (lobulated) margin
    inside = np.zeros(x.size, bool)
    inside[candidates[u * u + v * v <= radius * radius]] = True
    return inside.reshape(x.shape)


def phantom_maps(anatomy: Anatomy, x: np.ndarray, z: np.ndarray):
    """Segmentation, echogenicity (scatterer variance) and attenuation at points ``(x, z)``."""
    # Layer index per point (a deeper layer wins below its wavy upper boundary), then table look-ups.
    layer = np.zeros(x.shape, np.uint8)
    distance = np.full(x.shape, np.inf, np.float32)  # to the nearest interface
    for k, (depth, amp, wavelength, phase, *_) in enumerate(anatomy.layers):
        if depth == 0 and amp == 0:
            continue  # the skin layer covers everything
        top = np.float32(depth) + np.float32(amp) * np.sin(np.float32(2 * np.pi / wavelength) * x
                                                           + np.float32(phase))
        below = z - top
        layer[below >= 0] = k
        np.minimum(distance, np.abs(below), out=distance)
    seg = np.asarray([lay[4] for lay in anatomy.layers], np.uint8)[layer]
    echo = np.asarray([lay[5] for lay in anatomy.layers], np.float32)[layer]
    atten = np.asarray([lay[6] for lay in anatomy.layers], np.float32)[layer]
    t = [np.float32(v) for v in anatomy.texture]
    two_pi = np.float32(2 * np.pi)
    echo *= 1.0 + t[0] * np.sin(t[1] * two_pi * x + t[5]) * np.sin(t[2] * two_pi * z + t[6]) \
        + 0.5 * t[0] * np.sin(t[3] * two_pi * (x + z) + t[7]) * np.cos(t[4] * two_pi * z + t[8])
    # Specular interfaces: a thin bright line along each boundary (Gaussian profile, width 0.006).
    distance *= np.float32(1 / 0.006)
    near = distance < 4.0
    echo[near] += 4.0 * np.exp(-distance[near] ** 2)
    if anatomy.vessel is not None:
        x0, z0, angle, radius = anatomy.vessel
        dist = np.abs(np.float32(-np.sin(angle)) * (x - np.float32(x0)) + np.float32(np.cos(angle))
                      * (z - np.float32(z0)))
        inside = dist <= radius
        wall = np.abs(dist - np.float32(radius)) < 0.006
        echo[wall] *= 3.0
        seg[inside], echo[inside], atten[inside] = SEG["vessel"], 0.003, 0.1
    if anatomy.lesion is not None:
        inside = _lesion_inside(anatomy.lesion, x, z)
        lesion_echo, lesion_att = {1: (0.002, 0.1), 2: (0.25, 1.2), 3: (2.5, 1.3), 4: (25.0, 12.0)}[anatomy.label]
        seg[inside], echo[inside], atten[inside] = LESION_SEGMENT[anatomy.label], lesion_echo, lesion_att
    return seg, np.maximum(echo, 0.0), atten


# ------------------------------------------------------------------------------------------------ physics
def _axial_transfer(a: int, frequency: float, cycles: float) -> np.ndarray:
    """Axial pulse spectrum on the ``rfft`` bins (Gaussian around the carrier) times the analytic-signal filter.

    The analytic signal keeps positive frequencies only, doubled (``2 * [0 < k < 1/2]``); the negative ones are
    the zero padding that ``ifft(..., n=a)`` adds, so one ``rfft`` / ``ifft`` pair does the axial convolution and
    the Hilbert transform together.
    """
    k = scipy.fft.rfftfreq(a).astype(np.float32)  # cycles per sample
    sigma_t = cycles / frequency  # envelope sigma in samples
    spectrum = np.exp(-2 * (np.pi * sigma_t) ** 2 * (k - frequency) ** 2)
    return (spectrum * 2.0 * ((k > 0) & (k < 0.5))).astype(np.float32)[:, None]


def _lateral_transfer(a: int, lines: int, pulse: dict) -> np.ndarray:
    """Per-depth lateral Gaussian transfer ``[A, L//2+1]``: the beam widens away from the focus."""
    z = np.linspace(0, 1, a, dtype=np.float32)[:, None]
    sigma = pulse["lateral_sigma"] * np.sqrt(1 + ((z - pulse["focal_depth"]) / pulse["rayleigh_depth"]) ** 2)
    k = scipy.fft.rfftfreq(lines).astype(np.float32)[None, :]
    return np.exp(np.float32(-2 * np.pi**2) * (sigma * k) ** 2).astype(np.float32)


def _poisson_counts(rng: np.random.Generator, lam: float, shape: tuple[int, ...]) -> np.ndarray:
    """Poisson(lam) scatterer counts per cell, float32.

    From ``lam >= 8`` (the default range) the normal approximation ``max(0, lam + sqrt(lam) * N(0, 1))``
    (3x cheaper, and the PSF sums hundreds of cells anyway); below, the exact inverse transform.
    """
    if lam >= 8:
        counts = rng.standard_normal(shape, dtype=np.float32)
        counts *= np.float32(np.sqrt(lam))
        counts += np.float32(lam)
        return np.maximum(counts, 0.0, out=counts)
    k = np.arange(int(lam + 12 * np.sqrt(lam) + 12))
    cdf = scipy.stats.poisson.cdf(k, lam).astype(np.float32)
    return np.searchsorted(cdf, rng.random(shape, dtype=np.float32)).astype(np.float32)


def analytic_signal(echo: np.ndarray, pulse: dict, rng: np.random.Generator) -> np.ndarray:
    """Complex analytic RF signal ``[A, L]`` (complex64) of a scatterer field of variance ``echo``.

    Scatterers: a Poisson number per cell of unit-Gaussian amplitude, i.e. ``sqrt(count * echo) * N(0, 1)``.
    RF: laterally a depth-dependent Gaussian (exact, row by row in the lateral Fourier domain), then axially the
    Gaussian-enveloped cosine pulse fused with the Hilbert transform (see ``_axial_transfer``). Normalised so that
    unit echogenicity gives unit mean power, whatever the pulse and density. The envelope is its magnitude.
    """
    a, lines = echo.shape
    counts = _poisson_counts(rng, pulse["density"], echo.shape)
    counts *= echo
    scatterers = np.sqrt(counts, out=counts)
    scatterers *= rng.standard_normal(echo.shape, dtype=np.float32)
    lateral_transfer = _lateral_transfer(a, lines, pulse)
    axial_transfer = _axial_transfer(a, pulse["frequency"], pulse["cycles"])
    lateral = scipy.fft.irfft(scipy.fft.rfft(scatterers, axis=1) * lateral_transfer, n=lines, axis=1)
    spectrum = scipy.fft.rfft(lateral, axis=0)
    # Normalisation folded into the axial transfer: 1 / sqrt(density * PSF energy).
    lat_energy = (2 * np.sum(lateral_transfer**2, axis=1) - lateral_transfer[:, 0] ** 2) / lines
    energy = float(np.sum(axial_transfer**2) / a) * float(np.mean(lat_energy))
    spectrum *= axial_transfer * np.float32(1 / np.sqrt(pulse["density"] * energy))
    return scipy.fft.ifft(spectrum, n=a, axis=0).astype(np.complex64, copy=False)


def envelope(echo: np.ndarray, pulse: dict, rng: np.random.Generator) -> np.ndarray:
    """Envelope ``[A, L]`` (float32) of the RF of a scatterer field of variance ``echo`` (before attenuation):
    the magnitude of the analytic signal."""
    return np.abs(analytic_signal(echo, pulse, rng))


def render(anatomy_seed: int, speckle_seed: int, config: SimulatorConfig = SimulatorConfig(), *,
           return_envelope: bool = False, acquisition_seed: int | None = None) -> dict[str, Any]:
    """One B-mode image.

    ``acquisition_seed``: when given, the scanner settings (geometry, pulse, display, overlay) come from this seed
    instead of the anatomy seed, and only the phantom (layers, vessel, lesion, texture, label) from
    ``anatomy_seed``: several anatomies scanned with one probe and one preset (the speckle-invariance set).

    Returns ``image`` uint8 ``[S, S]``, ``label`` int (index into ``CLASS_NAMES``), ``segmentation`` uint8
    ``[S, S]`` (index into ``SEGMENTATION_NAMES``), ``scan_mask`` bool ``[S, S]``, ``params`` (dict), and with
    ``return_envelope`` the envelope ``[A, L]`` on the acquisition grid before attenuation and log compression.
    """
    anatomy = sample_anatomy(anatomy_seed, config)
    if acquisition_seed is not None:
        scanner = sample_anatomy(acquisition_seed, config)
        anatomy = dataclasses.replace(anatomy, geometry=scanner.geometry, pulse=scanner.pulse,
                                      display=scanner.display, overlay=scanner.overlay)
    rng = np.random.default_rng(derive_seed(speckle_seed, 2))
    grid, size = config.grid_shape, config.image_size
    x, z = _acquisition_points(anatomy.geometry, grid)
    seg_acq, echo, atten = phantom_maps(anatomy, x, z)
    pulse, display = anatomy.pulse, anatomy.display

    analytic = analytic_signal(echo, pulse, rng)
    # Two-way attenuation integrated along each beam line; TGC undoes a fraction of the tissue average.
    dz = 1.0 / (grid[0] - 1)
    depth = np.linspace(0, 1, grid[0], dtype=np.float32)[:, None]
    log_gain = np.cumsum(atten, axis=0)
    log_gain *= np.float32(-dz * pulse["attenuation"])
    log_gain += np.float32(pulse["tgc"] * pulse["attenuation"]) * depth
    # Electronic noise: circular complex Gaussian added to the received (attenuated) analytic signal.
    noise = rng.standard_normal(grid + (2,), dtype=np.float32).view(np.complex64)[..., 0]
    noise *= np.float32(10 ** (display["noise_db"] / 20) / np.sqrt(2))
    received = analytic * np.exp(log_gain)
    received += noise
    power = received.real**2
    power += received.imag**2
    # Log compression: the tissue level (unit echogenicity, 0 dB) sits at 55% of the dynamic range (mid grey,
    # leaving head-room for bright reflectors), shifted by the gain; the range maps to [0, 255].
    dr = display["dynamic_range_db"]
    db = 10 * np.log10(np.maximum(power, np.float32(1e-12)))
    db += np.float32(display["gain_db"] + 0.55 * dr)
    compressed = np.clip(db * np.float32(255.0 / dr), 0.0, 255.0)

    image = _scan_convert(compressed.astype(np.float32), anatomy.geometry, size)
    _, _, mask, nearest = _scan_conversion(anatomy.geometry, grid, size)
    segmentation = np.where(mask, seg_acq.reshape(-1)[nearest].reshape(size, size), SEG["outside"]).astype(np.uint8)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    if anatomy.overlay:
        image = burn_in_overlays(image, anatomy, np.random.default_rng(derive_seed(anatomy_seed, 3)))
    out = dict(image=image, label=anatomy.label, segmentation=segmentation, scan_mask=mask.copy(),
               params=dict(geometry=anatomy.geometry.kind, geometry_variant=anatomy.geometry.variant,
                           overlay=anatomy.overlay, **pulse, **display))
    if return_envelope:
        out["envelope"] = np.abs(analytic)
    return out


def render_homogeneous(speckle_seed: int, config: SimulatorConfig = SimulatorConfig(), **pulse_overrides: float
                       ) -> np.ndarray:
    """Envelope ``[A, L]`` of a homogeneous phantom (unit echogenicity, no attenuation) on a linear grid.

    For physics checks: fully developed speckle is Rayleigh distributed (mean/std = 1.91) and its grain size
    follows the PSF (``lateral_sigma``, ``cycles``, ``frequency`` can be overridden).
    """
    pulse = dict(frequency=float(np.mean(config.center_frequency)), cycles=float(np.mean(config.pulse_cycles)),
                 lateral_sigma=float(np.mean(config.lateral_sigma)), focal_depth=0.5, rayleigh_depth=1e6,
                 density=float(config.scatterer_density[1]))
    pulse.update(pulse_overrides)
    rng = np.random.default_rng(derive_seed(speckle_seed, 2))
    return envelope(np.ones(config.grid_shape, np.float32), pulse, rng)


# ------------------------------------------------------------------------------------------------ overlays
def burn_in_overlays(image: np.ndarray, anatomy: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Text, a depth ruler and (when there is a lesion) calipers, burned into the pixels as scanners do."""
    from PIL import Image, ImageDraw

    size = image.shape[0]
    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    level = int(rng.integers(180, 256))
    draw.text((2, 1), f"{rng.choice(['L12-5', 'C5-1', 'P4-2'])} {int(rng.integers(30, 99))}%", fill=level)
    for i in range(11):  # depth ruler on the right edge
        y = int(i * (size - 1) / 10)
        draw.line([(size - 4 - (3 if i % 5 == 0 else 0), y), (size - 2, y)], fill=level)
    if anatomy.lesion is not None:
        cx, cz, rx = anatomy.lesion[:3]
        for px, pz in ((cx - rx, cz), (cx + rx, cz)):
            u, v = int((px + 0.5) * size), int(pz * size)
            draw.line([(u - 3, v), (u + 3, v)], fill=level)
            draw.line([(u, v - 3), (u, v + 3)], fill=level)
    return np.asarray(pil, dtype=np.uint8)


# ------------------------------------------------------------------------------------------------ source
class SyntheticUltrasoundSource:
    """Grain random-access source: ``index -> render(anatomy_seed(seed, index), speckle_seed(seed, index))``.

    Picklable and deterministic, so an epoch of ``num_examples`` images is the same on every machine and in every
    worker process. ``speckle_seed_offset`` renders the same anatomies under new speckle.
    """

    def __init__(self, num_examples: int, seed: int = 0, config: SimulatorConfig = SimulatorConfig(),
                 speckle_seed_offset: int = 0):
        self.num_examples, self.seed, self.config = int(num_examples), int(seed), config
        self.speckle_seed_offset = int(speckle_seed_offset)

    def __len__(self) -> int:
        return self.num_examples

    def seeds(self, index: int) -> tuple[int, int]:
        return derive_seed(self.seed, index, 0), derive_seed(self.seed, index, 1, self.speckle_seed_offset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} synthetic images")
        anatomy_seed, speckle_seed = self.seeds(index)
        out = render(anatomy_seed, speckle_seed, self.config)
        return dict(image=out["image"], label=np.int32(out["label"]), scan_mask=out["scan_mask"],
                    segmentation=out["segmentation"], index=np.int32(index))

    def __repr__(self) -> str:
        return (f"SyntheticUltrasoundSource(num_examples={self.num_examples}, seed={self.seed}, "
                f"speckle_seed_offset={self.speckle_seed_offset}, config={self.config})")


# ------------------------------------------------------------------------------------------------ CLI
def contact_sheet(path: str | Path, num: int = 24, seed: int = 0, size: int = 224, columns: int = 6) -> Path:
    """A grid of images with their class and scan-mask outline, plus a row: one anatomy under 6 speckle seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = SimulatorConfig(image_size=size)
    source = SyntheticUltrasoundSource(num, seed, config)
    rows = -(-num // columns) + 1
    fig, axes = plt.subplots(rows, columns, figsize=(2 * columns, 2.15 * rows), dpi=90)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < num:
            ex = source[i]
            ax.imshow(ex["image"], cmap="gray", vmin=0, vmax=255)
            ax.contour(ex["scan_mask"], levels=[0.5], colors="#3fa7ff", linewidths=0.6)
            ax.set_title(CLASS_NAMES[int(ex["label"])], fontsize=8)
    anatomy_seed = source.seeds(1)[0]
    first_speckle_cell = (rows - 1) * columns
    for k, ax in enumerate(axes.flat[first_speckle_cell:]):
        ax.imshow(render(anatomy_seed, 1000 + k, config)["image"], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"same anatomy, speckle {k}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def write_sample(out: str | Path, num: int, size: int = 224, seed: int = 0) -> dict[str, Any]:
    """PNG images, segmentation and scan masks, and ``labels.json``; returns a summary."""
    from PIL import Image

    out = Path(out)
    for sub in ("images", "segmentation", "scan_mask"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    source = SyntheticUltrasoundSource(num, seed, SimulatorConfig(image_size=size))
    records, start = [], time.perf_counter()
    for i in range(num):
        anatomy_seed, speckle_seed = source.seeds(i)
        ex = render(anatomy_seed, speckle_seed, source.config)
        name = f"{i:06d}.png"
        Image.fromarray(ex["image"]).save(out / "images" / name)
        Image.fromarray(ex["segmentation"]).save(out / "segmentation" / name)
        Image.fromarray(ex["scan_mask"].astype(np.uint8) * 255).save(out / "scan_mask" / name)
        records.append(dict(index=i, file=f"images/{name}", anatomy_seed=anatomy_seed, speckle_seed=speckle_seed,
                            label=ex["label"], class_name=CLASS_NAMES[ex["label"]], params=ex["params"]))
    elapsed = time.perf_counter() - start
    (out / "labels.json").write_text(json.dumps(dict(class_names=CLASS_NAMES,
                                                     segmentation_names=SEGMENTATION_NAMES, examples=records),
                                                indent=1))
    counts = np.bincount([r["label"] for r in records], minlength=len(CLASS_NAMES))
    return dict(num=num, size=size, seed=seed, out=str(out), seconds=round(elapsed, 2),
                classes={CLASS_NAMES[c]: int(n) for c, n in enumerate(counts)})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a sample of synthetic ultrasound images to disk.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num", type=int, required=True, help="number of images")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contact-sheet", default=None, help="also write a contact-sheet PNG here")
    args = parser.parse_args(argv)
    summary = write_sample(args.out, args.num, args.size, args.seed)
    if args.contact_sheet:
        contact_sheet(args.contact_sheet, min(args.num, 24), args.seed, args.size)
    print(f"wrote {summary['num']} images of {summary['size']}x{summary['size']} to {summary['out']} in "
          f"{summary['seconds']}s; classes {summary['classes']}")


if __name__ == "__main__":
    main()
