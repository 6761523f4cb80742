"""Built-in synthetic ultrasound: a B-mode simulator in physical units (the default data of the project).

Interface (what the task suite, the evaluators and the pipeline use)
---------------------------------------------------------------------
``render(anatomy_seed, speckle_seed, config, *, acquisition_seed=None, scene=None, return_envelope=False)``
returns a dict:

- ``image`` uint8 ``[S, S]`` (B-mode, black outside the scan), ``scan_mask`` bool ``[S, S]``;
- ``segmentation`` uint8 ``[S, S]``: a tissue code per pixel, index into ``SEGMENTATION_NAMES`` (``SEG[name]``):
  0 outside, 1 tissue (generic soft tissue), 2 fat, 3 muscle, 4 vessel (blood), 5 cyst, 6 hypoechoic lesion,
  7 hyperechoic lesion, 8 calcification, 9 skin, 10 liver, 11 kidney cortex, 12 renal medulla, 13 renal sinus,
  14 thyroid, 15 trachea (air), 16 bladder (urine), 17 bone, 18 diaphragm. A pixel takes the code of the nearest
  acquisition sample; lesion codes also mark every pixel whose anti-aliasing footprint is at least half lesion
  (a lesion smaller than that: its best-covered pixels, so a calcification smaller than a pixel still marks the
  pixel it brightens);
- ``label`` int: the lesion class (index into ``CLASS_NAMES``, as before);
- ``labels`` ``dict[str, int]``: one entry per task of ``TASK_CLASSES`` (index into ``TASK_CLASSES[task]``), -1
  where the task does not apply (``margin`` is only defined for solid lesions, hypo- and hyperechoic);
- ``params``: the acquisition and anatomy parameters (probe, depth, frequency, PSF widths in mm, gain...; organ,
  lesion size in mm and contrast in dB; the label-defining parameters of the diffuse ``grade``,
  ``host_echo_db`` and ``host_atten_db_cm_mhz``, and of the ``margin``, ``margin_low_harmonics`` and
  ``margin_high_harmonics``: the RMS relative variation of the boundary radius in angular harmonics 1-6 (lobes)
  and >= 7 (spicules), 0 for a smooth oval).

``scene`` optionally fixes any of ``{"organ": name, "lesion": name, "margin": name, "grade": int}``; unspecified
entries are drawn from the anatomy seed (a ``margin`` without a ``lesion`` draws a solid lesion). The draws of
every other quantity do not depend on which entries are fixed... except through the fixed values themselves.

Tasks (``TASK_CLASSES``): ``lesion`` (none / cyst / hypoechoic / hyperechoic / calcified), ``organ`` (scene
families with their own layout: liver with vessels and diaphragm, kidney with cortex, pyramids and echogenic
sinus, thyroid lobe between carotid and trachea, fluid-filled bladder, layered muscle over bone), ``margin`` of a
solid lesion (smooth oval / lobulated / spiculated, at equal area and contrast distributions), ``grade``
(3 diffuse grades of the organ's parenchyma, fatty-liver-like: echogenicity and attenuation rise together).

Physics (all in mm, MHz, dB; c = 1540 m/s)
------------------------------------------
Probes (``PROBES``): linear 5-12 MHz, 30-60 mm deep, 38-46 mm wide; curvilinear 2-5 MHz, 100-200 mm deep, 55-70
degree fan from a 50 mm radius; phased-array sector 1.5-4 MHz, 100-160 mm deep, 70-90 degrees. Each probe has a
penetration limit: the highest usable frequency at depth D is ``min(f_max, P / D)`` (P in mm MHz), and an image's
centre frequency ``f`` is drawn below it, as a sonographer lowers the frequency to see deeper.

- Wavelength ``lambda = c / f``.
- Axial (range) resolution from the pulse: a Gaussian pulse-echo spectrum of -6 dB fractional bandwidth ``B``
  has an envelope of FWHM ``0.441 * c / (B f)`` in range (``= 0.441 lambda / B``).
- Lateral resolution (pulse-echo FWHM) ``W(z) = lambda F(z) sqrt(2 (1 + s^2) / (2 + s^2))``,
  ``s = (z - z_f) / z_R``: the product of a transmit beam focused at ``z_f`` (FWHM ``sqrt(2) lambda F
  sqrt(1 + s^2)``) and a dynamically focused receive beam (FWHM ``sqrt(2) lambda F``), so ``W = lambda F`` at
  the focus, widening away from it towards ``sqrt(2) lambda F``; ``z_R = 3.5 lambda F^2`` is half the depth of
  field; ``F(z) = max(F#, z / D_ap)`` (the aperture ``D_ap`` of the probe caps the F-number's fall with depth,
  so sector and curvilinear beams widen in the far field).
- Acquisition grid (per image, independent of the output size): the smallest grid with ``samples_per_cell``
  (>= 2) samples per FWHM of this image's PSF, axially (range samples per axial FWHM) and laterally (beam lines
  per narrowest lateral FWHM ``min_z W(z)``; for fans in angle, ``min_z W(z) / r(z)``).
- Scatterers: each grid cell holds many sub-resolution scatterers, so its summed echo is circular complex
  Gaussian (central limit), of variance the local echogenicity (linear power, from the dB map); the carrier's
  phase is part of that random phase, which is why the simulation runs at complex baseband (IQ), as scanners
  demodulate: the envelope ``|IQ|`` has the same statistics as the magnitude of the analytic RF signal.
- IQ = scatterers convolved with the PSF: axially a Gaussian of the FWHM above, laterally a Gaussian of FWHM
  ``W(z)`` per depth row (both exact in the Fourier domain of each axis, FFTs of the grid zero-padded by 3 PSF
  sigmas; the few rows whose lateral PSF is wider than a third of the scan, a sector's first millimetres, are
  padded apart so they do not set every row's FFT length), normalised so that 0 dB tissue has unit mean power
  at every depth.
- Attenuation, two-way, integrated along each beam: ``A(z) = 2 f int_0^z alpha(s) ds`` dB (``alpha`` in
  dB/cm/MHz per tissue: soft tissue ~0.5-0.7, fluid ~0.01-0.2, fat 0.6, muscle 1.0, bone and calcification
  ~20, air ~ total). TGC adds ``2 f alpha_tgc z`` dB, ``alpha_tgc`` a fraction (``tgc_compensation``) of
  the organ's normal attenuation, as a sonographer sets it (so a higher grade darkens the deep field): a cyst
  (alpha ~0) leaves the tissue behind it brighter (posterior enhancement), a calcification or bone a shadow.
- Electronic noise: circular complex Gaussian at ``noise_db`` below 0 dB tissue, added before the TGC (so it
  rises with depth; fluid sits at this noise floor). It is the scatterers' unit white field shifted by half the
  grid in both axes: white, Gaussian, and independent of the signal at every sample (which only depends on
  scatterers within a few PSF widths), at no extra random draws.
- Log compression: ``dB = 20 log10 |IQ| + gain + 0.55 DR``, mapped from ``[0, DR]`` to grey levels 0-255 (0 dB
  tissue at 55% of the dynamic range ``DR``).
- Scan conversion with anti-aliasing (``ScanConverter``): each output pixel (square, ``pixel_mm = field / S``,
  the scan's bounding box fitted in the square) is the box average of the log-compressed grid over the pixel's
  footprint (``pixel / spacing`` samples in range and across beams; fans: per depth), interpolated bilinearly at
  the pixel centre: bilinear interpolation when the output is finer than the grid, area averaging when coarser,
  as when a clinical frame is resized. Only the pixels' beam coordinates are cached, per (probe variant, output
  size). The grain is therefore a fixed size in mm: at 224 px a linear scan shows it, at 64 px it is averaged
  as a resized clinical frame's is.

Contrast (clinical B-mode, relative to the host tissue): cysts anechoic (fluid, at the noise floor) with a thin
bright wall and posterior enhancement; hypoechoic solid -6..-15 dB; hyperechoic solid +6..+15 dB; calcifications
+20..+30 dB, 1-5 mm, with a shadow. Solid lesions 5-15 mm (linear) or 12-30 mm (curvilinear, sector), cysts the
same, equivalent-area diameters; vessels anechoic with bright walls (portal veins, carotid).

Deviations stated: the pulse-echo bandwidth (``fractional_bandwidth`` 0.28-0.4) is narrower than the 60-80% of
modern probes, and the penetration limit is conservative: both keep the acquisition grid small enough for
>= 300 images/s per core at 64-96 px; the axial grain is about 2x coarser than on a modern scanner and still
finer than the lateral. Frequency-dependent attenuation does not shift the centre frequency. No reverberation
other than the trachea's, no refraction, no harmonic imaging.

Cost: ``benchmarks/data_throughput.py``: about 6-7 ms of CPU per image at any output size on a shared, loaded
2-core machine (the grid, ~34k samples on average, does not shrink with the output; 0.65-0.71x the CPU time of
the first physical version, compared in one process). What remains, at 64 px: the phantom's region painting
(~30%), the scatterers' normal draws and the PSF's FFTs (~30%), scan conversion (~15%), the scene draws (~10%). Determinism: every random draw comes from
``np.random.Generator(PCG64)`` seeded by ``derive_seed``; no global RNG, no threads (scipy.fft runs on one).

CLI: ``python -m usjepa_jax.data.synthetic --out DIR --num N [--size 224] [--seed S] [--contact-sheet PNG]``
writes a browsable sample; ``--cnr-table --sizes 64,96,224`` prints the median lesion CNR by class and size;
``--speckle-share 64/8,112/8`` the speckle share of the pixel targets at these input and patch sizes;
``--arrayrecord DIR`` pre-renders the images into the prepared ArrayRecord format (``config.data.source=
'prepared'``) for accelerator runs, where no CPU simulator keeps up.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.fft

from usjepa_jax.data import shards
from usjepa_jax.data.seeding import derive_seed

SPEED_OF_SOUND = 1.540  # mm per microsecond (1540 m/s): lambda[mm] = SPEED_OF_SOUND / f[MHz]

CLASS_NAMES = ("none", "cyst", "hypoechoic_solid", "hyperechoic_solid", "calcified")
ORGANS = ("liver", "kidney", "thyroid", "bladder", "muscle")
MARGINS = ("smooth", "lobulated", "spiculated")
GRADES = ("normal", "mild", "severe")
TASK_CLASSES: dict[str, tuple[str, ...]] = {"lesion": CLASS_NAMES, "organ": ORGANS, "margin": MARGINS,
                                            "grade": GRADES}
SOLID_LESIONS = (2, 3)  # the classes that have a margin

SEGMENTATION_NAMES = ("outside", "tissue", "fat", "muscle", "vessel", "cyst", "hypoechoic", "hyperechoic",
                      "calcification", "skin", "liver", "kidney_cortex", "renal_medulla", "renal_sinus", "thyroid",
                      "trachea", "bladder", "bone", "diaphragm")
SEG = {name: i for i, name in enumerate(SEGMENTATION_NAMES)}
LESION_SEGMENT = {1: SEG["cyst"], 2: SEG["hypoechoic"], 3: SEG["hyperechoic"], 4: SEG["calcification"]}
GEOMETRIES = ("linear", "sector", "curvilinear")


@dataclasses.dataclass(frozen=True)
class Probe:
    """A probe preset: frequency range, discrete depths and field spans (so scan-conversion maps are cached)."""

    kind: str
    frequency_mhz: tuple[float, float]
    depths_mm: tuple[float, ...]
    spans: tuple[float, ...]  # linear: field width in mm; fans: opening angle in degrees
    radius_mm: float  # fans: apex distance above the skin (curvilinear: the array's radius of curvature)
    aperture_mm: float  # largest active aperture (caps the F-number's fall with depth)
    penetration_mm_mhz: float  # highest frequency at depth D: min(f_max, penetration / D)
    natural_organs: tuple[str, ...]  # the scenes this probe is used for (anatomy-seed draws)


PROBES = {
    "linear": Probe("linear", (5.0, 12.0), (30.0, 40.0, 50.0, 60.0), (38.0, 46.0), 0.0, 20.0, 270.0,
                    ("thyroid", "muscle")),
    "curvilinear": Probe("curvilinear", (2.0, 5.0), (100.0, 140.0, 180.0), (55.0, 70.0), 50.0, 25.0, 360.0,
                         ("liver", "kidney", "bladder", "muscle")),
    "sector": Probe("sector", (1.5, 4.0), (100.0, 130.0, 160.0), (70.0, 90.0), 0.0, 18.0, 330.0,
                    ("liver", "kidney", "bladder")),
}


@dataclasses.dataclass(frozen=True)
class SimulatorConfig:
    """Ranges from which each image's parameters are drawn (uniformly) from its anatomy (or acquisition) seed."""

    image_size: int = 224
    geometries: tuple[str, ...] = GEOMETRIES  # probes allowed (names of PROBES)
    organs: tuple[str, ...] = ORGANS  # scene families allowed
    class_probs: tuple[float, ...] = (0.2, 0.2, 0.2, 0.2, 0.2)  # lesion classes
    fractional_bandwidth: tuple[float, float] = (0.28, 0.4)  # pulse-echo, -6 dB
    f_number: tuple[float, float] = (2.0, 3.0)
    focal_depth: tuple[float, float] = (0.3, 0.7)  # transmit focus, fraction of the depth
    tgc_compensation: tuple[float, float] = (0.85, 1.0)  # fraction of the organ's normal attenuation the TGC undoes
    dynamic_range_db: tuple[float, float] = (50.0, 65.0)
    gain_db: tuple[float, float] = (-5.0, 5.0)
    noise_db: tuple[float, float] = (-95.0, -80.0)  # electronic noise relative to 0 dB tissue, before TGC
    vessel_prob: float = 0.5  # extra vessels (liver: hepatic vein; muscle: a vessel between bellies)
    overlay_prob: float = 0.3
    samples_per_cell: float = 2.0  # acquisition samples per FWHM of the finest PSF, each direction

    def __post_init__(self):
        if self.image_size < 16:
            raise ValueError(f"SimulatorConfig.image_size={self.image_size} must be at least 16.")
        unknown = set(self.geometries) - set(GEOMETRIES)
        if unknown or not self.geometries:
            raise ValueError(f"SimulatorConfig.geometries={self.geometries!r}: expected a subset of {GEOMETRIES}.")
        unknown = set(self.organs) - set(ORGANS)
        if unknown or not self.organs:
            raise ValueError(f"SimulatorConfig.organs={self.organs!r}: expected a subset of {ORGANS}.")
        if len(self.class_probs) != len(CLASS_NAMES) or abs(sum(self.class_probs) - 1) > 1e-6:
            raise ValueError(f"SimulatorConfig.class_probs={self.class_probs!r}: {len(CLASS_NAMES)} "
                             "probabilities summing to 1.")
        if self.samples_per_cell < 2.0:
            raise ValueError(f"SimulatorConfig.samples_per_cell={self.samples_per_cell}: at least 2 samples per "
                             "resolution cell are needed to sample the PSF.")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "tuple[float, float]" and not (len(value) == 2 and value[0] <= value[1]):
                raise ValueError(f"SimulatorConfig.{f.name}={value!r}: expected a (low, high) range.")


# ------------------------------------------------------------------------------------------------ resolution
def axial_fwhm_mm(frequency_mhz: float, bandwidth: float) -> float:
    """Range FWHM of the pulse-echo envelope: ``0.441 c / (B f)``."""
    return 0.441 * SPEED_OF_SOUND / (bandwidth * frequency_mhz)


def lateral_fwhm_mm(z_mm: np.ndarray | float, frequency_mhz: float, f_number: float, focal_mm: float,
                    aperture_mm: float) -> np.ndarray:
    """Pulse-echo lateral FWHM ``W(z)`` (module docstring): ``lambda F`` at the focus, widening away from it."""
    lam = SPEED_OF_SOUND / frequency_mhz
    z = np.asarray(z_mm, np.float64)
    f_tx = max(f_number, focal_mm / aperture_mm)  # transmit F-number at the focus
    s2 = ((z - focal_mm) / (3.5 * lam * f_tx**2)) ** 2
    f_eff = np.maximum(f_number, z / aperture_mm)
    return lam * f_eff * np.sqrt(2 * (1 + s2) / (2 + s2))


def highest_frequency(probe: Probe, depth_mm: float) -> float:
    """``min(f_max, P / D)``, at least the probe's lowest frequency."""
    return max(probe.frequency_mhz[0], min(probe.frequency_mhz[1], probe.penetration_mm_mhz / depth_mm))


# ------------------------------------------------------------------------------------------------ geometry
@dataclasses.dataclass(frozen=True)
class ScanGeometry:
    """One probe variant: kind, depth (mm) and span (linear: width in mm; fans: angle in degrees)."""

    kind: str
    depth_mm: float
    span: float

    @property
    def probe(self) -> Probe:
        return PROBES[self.kind]

    @property
    def radius_mm(self) -> float:
        return self.probe.radius_mm

    @property
    def is_fan(self) -> bool:
        return self.kind != "linear"

    def field_mm(self) -> tuple[float, float, float]:
        """The square output field: (side, top z, centre x = 0) in mm; the scan's bounding box fitted inside."""
        if not self.is_fan:
            return max(self.span, self.depth_mm), 0.0, 0.0
        half, r = np.deg2rad(self.span) / 2, self.radius_mm
        width = 2 * (r + self.depth_mm) * np.sin(half)
        top = r * np.cos(half) - r
        return float(max(width, self.depth_mm - top)), float(top), 0.0


@dataclasses.dataclass(frozen=True)
class Grid:
    """The acquisition grid of a geometry: ``axial`` range samples x ``lines`` beam lines and their spacing."""

    axial: int
    lines: int
    dz_mm: float  # range sample spacing
    dline: float  # beam spacing: mm (linear) or radians (fans)

    @property
    def shape(self) -> tuple[int, int]:
        return self.axial, self.lines


def acquisition_grid(geometry: ScanGeometry, pulse: dict, samples_per_cell: float = 2.0) -> Grid:
    """The smallest grid sampling this image's PSF by ``samples_per_cell`` per FWHM in each direction: range
    samples per axial FWHM, beam lines per narrowest lateral FWHM (fans: in angle, ``min_z W(z) / r(z)``).
    It depends on the probe and the pulse only, never on the output size."""
    probe = geometry.probe
    axial = math.ceil(samples_per_cell * geometry.depth_mm / axial_fwhm_mm(pulse["frequency_mhz"],
                                                                          pulse["bandwidth"]))
    z = np.append(np.linspace(0.25, geometry.depth_mm, 256), pulse["focal_mm"])  # the focus: the narrowest beam
    width = lateral_fwhm_mm(z, pulse["frequency_mhz"], pulse["f_number"], pulse["focal_mm"], probe.aperture_mm)
    if geometry.is_fan:
        angle = np.deg2rad(geometry.span)
        lines = math.ceil(samples_per_cell * angle / np.min(width / (geometry.radius_mm + z)))
        return Grid(axial, lines, geometry.depth_mm / axial, angle / lines)
    lines = math.ceil(samples_per_cell * geometry.span / width.min())
    return Grid(axial, lines, geometry.depth_mm / axial, geometry.span / lines)


def _acquisition_points(geometry: ScanGeometry, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Body coordinates (x lateral, z depth below the probe's centre, d depth below the skin) in mm of every
    acquisition sample ``[A, L]`` (beam lines are the columns), float32."""
    a, lines = grid.shape
    rng_mm = ((np.arange(a, dtype=np.float32) + 0.5) * np.float32(grid.dz_mm))[:, None]
    col = (np.arange(lines, dtype=np.float32) + np.float32(0.5 - lines / 2))[None, :]
    if not geometry.is_fan:
        x = np.broadcast_to(col * np.float32(grid.dline), (a, lines))
        z = np.broadcast_to(rng_mm, (a, lines))
        return x, z, z
    r, theta = np.float32(geometry.radius_mm) + rng_mm, col * np.float32(grid.dline)
    x, z = r * np.sin(theta), r * np.cos(theta) - np.float32(geometry.radius_mm)
    d = np.broadcast_to(rng_mm, (a, lines)) if geometry.kind == "curvilinear" else z  # the skin follows the array
    return x, z, d


def _output_points(geometry: ScanGeometry, size: int) -> tuple[np.ndarray, np.ndarray, float]:
    side, top, _ = geometry.field_mm()
    pixel = side / size
    centres = (np.arange(size) + 0.5) * pixel
    zs, xs = np.meshgrid(top + centres, centres - side / 2, indexing="ij")
    return xs, zs, pixel


@functools.lru_cache(maxsize=64)
def _pixel_map(geometry: ScanGeometry, size: int):
    """Per output pixel inside the scan: its flat index, range (mm) and lateral position (mm or radians) in beam
    coordinates; the scan mask ``[S, S]``; the pixel size (mm). Independent of the acquisition grid."""
    xs, zs, pixel = _output_points(geometry, size)
    if not geometry.is_fan:
        rng_mm, lateral = zs, xs
        mask = (np.abs(xs) <= geometry.span / 2) & (zs >= 0) & (zs <= geometry.depth_mm)
    else:
        r = np.hypot(xs, zs + geometry.radius_mm)
        rng_mm, lateral = r - geometry.radius_mm, np.arctan2(xs, zs + geometry.radius_mm)
        mask = (rng_mm >= 0) & (rng_mm <= geometry.depth_mm) & (np.abs(lateral) <= np.deg2rad(geometry.span) / 2)
    pix = np.flatnonzero(mask)
    return pix, rng_mm.reshape(-1)[pix], lateral.reshape(-1)[pix], mask, pixel


def _edge_pad(values: np.ndarray, pad: int | tuple[int, int], axis: int) -> np.ndarray:
    """``np.pad(mode="edge")`` of a 2-D array along one axis by ``pad`` (before, after), without its overhead."""
    before, after = (pad, pad) if isinstance(pad, int) else pad
    if not before and not after:
        return values
    shape = list(values.shape)
    n = shape[axis]
    shape[axis] = n + before + after
    out = np.empty(shape, values.dtype)
    inner = [slice(None)] * 2
    inner[axis] = slice(before, before + n)
    out[tuple(inner)] = values
    first, last = [slice(None)] * 2, [slice(None)] * 2
    first[axis], last[axis] = slice(0, 1), slice(n - 1, n)
    lo, hi = [slice(None)] * 2, [slice(None)] * 2
    lo[axis], hi[axis] = slice(0, before), slice(before + n, before + n + after)
    out[tuple(lo)] = values[tuple(first)]
    out[tuple(hi)] = values[tuple(last)]
    return out


def _box_columns(values: np.ndarray, width: float) -> np.ndarray:
    """``_box_rows`` along axis 0 with one width for every column (cumulative sums down the columns)."""
    m = int(np.floor((width - 1) / 2))
    f = np.float32((width - 1 - 2 * m) / 2)
    n, pad = values.shape[0], m + 1
    padded = _edge_pad(values, pad, axis=0)
    cum = np.cumsum(padded, axis=0, dtype=np.float32)
    lo, hi = pad - m - 1, pad + m
    total = cum[hi:hi + n] - cum[lo:lo + n]
    total += f * (padded[lo:lo + n] + padded[hi + 1:hi + 1 + n])
    total /= np.float32(2 * m + 1) + 2 * f
    return total


def _box_rows(values: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Centred moving average along axis 1 over a fractional ``width`` (>= 1) samples per row ``[A]``: the
    ``2m + 1`` samples around each one plus a fraction ``f`` of the next one on each side (``width = 2m + 1 + 2f``),
    from one cumulative sum of the edge-replicated rows; rows of equal ``m`` (contiguous: the width varies
    monotonically with depth) are one slice."""
    m_all = np.floor((width - 1) / 2).astype(np.int64)
    f_all = ((width - 1 - 2 * m_all) / 2).astype(np.float32)[:, None]
    n, pad = values.shape[1], int(m_all.max()) + 1
    padded = _edge_pad(values, pad, axis=1)
    cum = np.cumsum(padded, axis=1, dtype=np.float32)
    out = np.empty_like(values)
    starts = np.flatnonzero(m_all[1:] != m_all[:-1]) + 1
    starts = [0, *starts.tolist()]
    for start, stop in zip(starts, starts[1:] + [len(m_all)]):
        m, rows = int(m_all[start]), slice(start, stop)
        # Original sample k is padded[k + pad]: its window [k - m, k + m] sums to cum[k + pad + m] - cum[k + pad
        # - m - 1]; the fractional neighbours are padded[k + pad - m - 1] and padded[k + pad + m + 1].
        lo, hi = pad - m - 1, pad + m
        total = cum[rows, hi:hi + n] - cum[rows, lo:lo + n]
        f = f_all[rows]
        total += f * (padded[rows, lo:lo + n] + padded[rows, hi + 1:hi + 1 + n])
        total /= np.float32(2 * m + 1) + 2 * f
        out[rows] = total
    return out


class ScanConverter:
    """Anti-aliased scan conversion of one acquisition grid to the ``size`` x ``size`` output.

    Each output pixel is the box average of the grid over the pixel's footprint (``pixel / spacing`` samples in
    range and across beams, fans: per depth), interpolated bilinearly at the pixel centre: bilinear
    interpolation when the output is finer than the grid, area averaging when coarser, as resizing a frame."""

    def __init__(self, geometry: ScanGeometry, grid: Grid, size: int):
        pix, rng_mm, lateral, self.mask, pixel = _pixel_map(geometry, size)
        a, lines = grid.shape
        self.size, self.pix, self.rows = size, pix, a
        # Shrinking by 4 or more axially: first average blocks of k = width // 2 rows (the rest of the box on the
        # k times smaller grid), so the lateral filter and the interpolation run on fewer rows.
        self.k = max(1, int(pixel / grid.dz_mm // 2))
        ak, dz = -(-a // self.k), grid.dz_mm * self.k
        fi = np.clip(rng_mm / dz - 0.5, 0, ak - 1)
        fj = np.clip(lateral / grid.dline + lines / 2 - 0.5, 0, lines - 1)
        i0, j0 = np.minimum(fi.astype(np.int64), ak - 2), np.minimum(fj.astype(np.int64), lines - 2)
        self.di, self.dj = (fi - i0).astype(np.float32), (fj - j0).astype(np.float32)
        self.flat = i0 * lines + j0
        self.lines = lines
        fi_full = np.clip(rng_mm / grid.dz_mm - 0.5, 0, a - 1)
        self.nearest = np.rint(fi_full).astype(np.int64) * lines + np.rint(fj).astype(np.int64)
        self.axial_width = pixel / dz  # in (block-averaged) rows
        depth = (np.arange(ak) + 0.5) * dz
        spacing = grid.dline * (geometry.radius_mm + depth) if geometry.is_fan else np.full(ak, grid.dline)
        self.lateral_width = (pixel / spacing).astype(np.float32)
        self.full_lateral_width = np.repeat(self.lateral_width, self.k)[:a]

    def __call__(self, values: np.ndarray, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """``[A, L]`` float32 -> ``[S, S]`` float32 (0 outside the scan). ``rows``, ``cols``: only that block of
        the grid is non-zero (it is filtered alone, the rest taken as 0)."""
        if (rows, cols) != (slice(None), slice(None)):
            k = self.k
            r0, r1 = rows.start // k * k, min(self.rows, -(-rows.stop // k) * k)
            filtered = self._filter(np.ascontiguousarray(values[r0:r1, cols]), r0 // k)
            values = np.zeros((-(-self.rows // k), self.lines), np.float32)
            values[r0 // k:r0 // k + filtered.shape[0], cols] = filtered
        else:
            values = self._filter(values)
        flat, lines = values.reshape(-1), self.lines
        top = flat[self.flat] * (1 - self.dj) + flat[self.flat + 1] * self.dj
        bottom = flat[self.flat + lines] * (1 - self.dj) + flat[self.flat + lines + 1] * self.dj
        out = np.zeros(self.size * self.size, np.float32)
        out[self.pix] = top * (1 - self.di) + bottom * self.di
        return out.reshape(self.size, self.size)

    def _filter(self, values: np.ndarray, first_row: int = 0) -> np.ndarray:
        """Box filter a block of rows (starting at block-averaged row ``first_row``)."""
        if self.k > 1:
            a, lines = values.shape
            ak = -(-a // self.k)
            values = _edge_pad(values, (0, ak * self.k - a), axis=0)
            values = values.reshape(ak, self.k, lines).mean(axis=1, dtype=np.float32)
        if self.axial_width > 1.0:
            values = _box_columns(values, self.axial_width)
        width = self.lateral_width[first_row:first_row + values.shape[0]]
        if width.max() > 1.0:
            values = _box_rows(np.ascontiguousarray(values), np.maximum(width, 1.0))
        return values

    def nearest_sample(self, values: np.ndarray, fill: int = 0) -> np.ndarray:
        """``[S, S]`` of the nearest acquisition sample's value (``fill`` outside the scan)."""
        out = np.full(self.size * self.size, fill, values.dtype)
        out[self.pix] = values.reshape(-1)[self.nearest]
        return out.reshape(self.size, self.size)


# ------------------------------------------------------------------------------------------------ phantom
def _u(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


@dataclasses.dataclass(frozen=True)
class Tissue:
    seg: int
    echo_db: float  # echogenicity (mean backscattered power) relative to reference soft tissue
    atten: float  # dB/cm/MHz
    texture: tuple = ()  # () | ("smooth", amp_db, kx, kz, phase...) | ("striated", amp_db, angle, period, phase)


@dataclasses.dataclass(frozen=True)
class Region:
    """A tissue region painted over what is below it in the scene list.

    ``shape``: ``"below"`` (``geom = (depth, wave_amp, wave_len, phase)``: everything deeper than a wavy
    boundary in depth-below-skin), ``"ellipse"`` (``(cx, cz, rx, rz, rotation)`` with an optional radial
    ``margin`` modulation), ``"band"`` (``(x0, z0, angle, half_width)``: a straight tube), ``"arc"``
    (``(cx, cz, radius, half_thickness, half_angle)``: a curved sheet, convex side up). ``wall_db``: a bright
    specular boundary ``wall_mm`` thick (added power).
    """

    shape: str
    geom: tuple
    tissue: Tissue
    wall_db: float | None = None
    wall_mm: float = 0.6
    margin: tuple | None = None  # ("lobulated", lobes, amp, phase) | ("spiculated", spikes, length, phase, jitter)


def _radial_margin(margin: tuple | None, angle: np.ndarray) -> np.ndarray:
    """Boundary radius (relative) along each direction, normalised to the area of the unit circle."""
    if margin is None:
        return np.ones_like(angle)
    theta = np.linspace(0, 2 * np.pi, 720, endpoint=False, dtype=np.float32)
    profile = _margin_profile(margin, theta)
    norm = np.float32(1 / np.sqrt(np.mean(profile**2)))  # equal area: mean r^2 = 1
    return _margin_profile(margin, angle) * norm


def _margin_profile(margin: tuple, angle: np.ndarray) -> np.ndarray:
    kind = margin[0]
    if kind == "lobulated":
        _, lobes, amp, phase = margin
        return 1.0 + np.float32(amp) * np.sin(np.float32(lobes) * angle + np.float32(phase))
    if kind == "spiculated":
        _, spikes, length, phase, jitter = margin
        k = np.float32(spikes)
        wave = np.cos(k * angle + np.float32(phase))
        # Narrow spikes: a high power of the positive half-wave, each spike's length jittered.
        index = np.floor((k * angle + np.float32(phase) + np.float32(np.pi)) / np.float32(2 * np.pi)) % spikes
        lengths = np.asarray(jitter, np.float32)[index.astype(np.int64)]
        wave = np.maximum(wave, 0)
        wave *= wave
        wave *= wave  # ^4
        return 1.0 + np.float32(length) * lengths * (wave * wave * wave)  # ^12
    raise ValueError(f"unknown margin {kind!r}")


def margin_harmonics(margin: tuple | None) -> tuple[float, float]:
    """The shape parameters that define a margin class: the RMS of the boundary radius's relative variation in
    angular harmonics 1-6 (lobes) and >= 7 (spicules). (0, 0) for a smooth oval."""
    if margin is None:
        return 0.0, 0.0
    theta = np.linspace(0, 2 * np.pi, 512, endpoint=False, dtype=np.float32)
    coeffs = np.abs(np.fft.rfft(_radial_margin(margin, theta))) / len(theta)
    return float(np.sqrt(2 * np.sum(coeffs[1:7] ** 2))), float(np.sqrt(2 * np.sum(coeffs[7:] ** 2)))


class _Blocks:
    """Row and column extents of a 2-D grid of points, to find the rectangular block of rows x columns that
    holds every point inside an (x, z) bounding box (regions are then evaluated on that block only)."""

    def __init__(self, x: np.ndarray, z: np.ndarray):
        self.row_x = (x.min(axis=1), x.max(axis=1))
        self.row_z = (z.min(axis=1), z.max(axis=1))
        self.col_x = (x.min(axis=0), x.max(axis=0))
        self.col_z = (z.min(axis=0), z.max(axis=0))

    def block(self, bx: tuple[float, float], bz: tuple[float, float]) -> tuple[slice, slice] | None:
        rows = np.flatnonzero((self.row_x[1] >= bx[0]) & (self.row_x[0] <= bx[1]) & (self.row_z[1] >= bz[0])
                              & (self.row_z[0] <= bz[1]))
        cols = np.flatnonzero((self.col_x[1] >= bx[0]) & (self.col_x[0] <= bx[1]) & (self.col_z[1] >= bz[0])
                              & (self.col_z[0] <= bz[1]))
        if not len(rows) or not len(cols):
            return None
        return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _region_bounds(region: Region) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """(x, z) bounding box (mm) of a region and its wall; None for regions unbounded in x."""
    shape, g = region.shape, region.geom
    reach = region.wall_mm
    if shape == "ellipse":
        cx, cz, rx, rz, _ = g
        margin = region.margin
        extra = 1.0 + (margin[2] if margin and margin[0] == "spiculated" else margin[2] if margin else 0.0)
        reach += max(rx, rz) * extra * 1.3
    elif shape == "arc":
        cx, cz, radius, half_t, _ = g
        reach += radius + half_t
    else:
        return None
    return (cx - reach, cx + reach), (cz - reach, cz + reach)


def _signed_distance(region: Region, px: np.ndarray, pz: np.ndarray, pd: np.ndarray) -> np.ndarray:
    """Signed distance (mm, negative inside) to the region's boundary at points."""
    shape, g = region.shape, region.geom
    if shape == "below":
        depth, amp, wavelength, phase = g
        if px.ndim == 2 and px.strides[0] == 0:  # x constant down the columns (linear probe): one row of sines
            px = px[:1]
        return np.float32(depth) + np.float32(amp) * np.sin(np.float32(2 * np.pi / wavelength) * px
                                                            + np.float32(phase)) - pd
    if shape == "ellipse":
        cx, cz, rx, rz, rot = g
        c, s = np.float32(np.cos(rot)), np.float32(np.sin(rot))
        dx, dz = px - np.float32(cx), pz - np.float32(cz)
        u, v = (c * dx + s * dz) / np.float32(rx), (-s * dx + c * dz) / np.float32(rz)
        rho = np.sqrt(u * u + v * v)
        boundary = _radial_margin(region.margin, np.arctan2(v, u)) if region.margin else np.float32(1.0)
        return (rho - boundary) * np.float32(np.sqrt(rx * rz))
    if shape == "band":
        x0, z0, angle, half = g
        return np.abs(np.float32(-np.sin(angle)) * (px - np.float32(x0)) + np.float32(np.cos(angle))
                      * (pz - np.float32(z0))) - np.float32(half)
    cx, cz, radius, half_t, half_angle = g  # arc
    dx, dz = px - np.float32(cx), pz - np.float32(cz)
    dist = np.abs(np.sqrt(dx * dx + dz * dz) - np.float32(radius)) - np.float32(half_t)
    dist[np.abs(np.arctan2(dx, -dz)) > half_angle] = np.inf  # convex side up: centre below the sheet
    return dist


def _texture_db(texture: tuple, x: np.ndarray, z: np.ndarray) -> np.ndarray | float:
    if not texture:
        return 0.0
    kind, amp = texture[0], np.float32(texture[1])
    if kind == "smooth":  # low-frequency echogenicity variations (mm-scale)
        kx1, kz1, kx2, kz2, p1, p2 = (np.float32(v) for v in texture[2:])
        return amp * (np.sin(kx1 * x + p1) * np.sin(kz1 * z) + 0.7 * np.sin(kx2 * x + kz2 * z + p2))
    if kind == "striated":  # fibrillar lines (muscle fibres, fat septa) of a given angle and period
        angle, period, phase = texture[2:]
        t = (np.float32(np.sin(angle)) * x + np.float32(np.cos(angle)) * z) * np.float32(2 * np.pi / period)
        c = np.maximum(np.cos(t + np.float32(phase)), 0)
        c *= c
        return amp * (c * c * c - np.float32(0.2))  # a narrow bright line per period (cos^6)
    raise ValueError(f"unknown texture {kind!r}")


def phantom_maps(regions: tuple[Region, ...], x: np.ndarray, z: np.ndarray, d: np.ndarray):
    """Segmentation (uint8), echogenicity (linear power, float32) and attenuation (dB/cm/MHz) on a 2-D grid of
    points ``[A, L]`` (x, z in body coordinates, d depth below the skin; mm). Regions are painted in order, each
    evaluated only on the block of the grid that holds its bounding box: the painting records which region owns
    each point (the last one containing it), and the tissue values (textures included) are then evaluated only
    on the points each region keeps."""
    owner = np.zeros(x.shape, np.uint8 if len(regions) < 255 else np.uint16)  # 0: none, i: regions[i - 1]
    walls = np.zeros(x.shape, np.float32)
    blocks = _Blocks(x, z)
    full = (slice(None), slice(None))
    kept = []  # (owner index, region, block) of the regions in view
    for index, region in enumerate(regions, 1):
        bounds = _region_bounds(region)
        block = full if bounds is None else blocks.block(*bounds)
        if block is None:
            continue  # outside the field of view
        dist = _signed_distance(region, x[block], z[block], d[block])
        inside = dist <= 0
        np.copyto(owner[block], index, where=inside)
        wall = walls[block]
        np.copyto(wall, np.float32(0.0), where=inside)  # the interfaces of what it covers are gone
        if region.wall_db is not None:
            near = np.abs(dist) <= region.wall_mm / 2
            np.maximum(wall, np.float32(10 ** (region.wall_db / 10)), out=wall, where=near)
        kept.append((index, region, block))
    tissues = [Tissue(0, 0.0, 0.0)] + [region.tissue for region in regions]
    seg = np.array([t.seg for t in tissues], np.uint8)[owner]
    atten = np.array([t.atten for t in tissues], np.float32)[owner]
    echo_db = np.array([t.echo_db for t in tissues], np.float32)[owner]
    for index, region, block in kept:
        texture = region.tissue.texture
        if texture:
            mine = owner[block] == index
            if mine.any():
                echo_db[block][mine] = np.float32(region.tissue.echo_db) + _texture_db(
                    texture, x[block][mine], z[block][mine])
    echo = np.exp(echo_db * np.float32(np.log(10) / 10))
    echo += walls
    return seg, echo, atten


@dataclasses.dataclass(frozen=True)
class Anatomy:
    """Everything drawn for one image: the scene (regions, labels) and the acquisition settings."""

    label: int  # lesion class
    organ: int
    margin: int  # -1 without a solid lesion
    grade: int
    geometry: ScanGeometry
    regions: tuple[Region, ...]
    lesion: dict | None  # centre, size (mm), contrast (dB), region
    pulse: dict
    display: dict
    overlay: bool
    host: dict  # the parenchyma the grade acts on


def _name_index(task: str, value: Any) -> int:
    names = TASK_CLASSES[task]
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if 0 <= int(value) < len(names):
            return int(value)
    elif value in names:
        return names.index(value)
    raise ValueError(f"scene[{task!r}]={value!r}: expected one of {names} (or its index).")


def _draw_scene_labels(rng: np.random.Generator, config: SimulatorConfig, scene: dict) -> tuple[int, int, int, int]:
    unknown = set(scene) - set(TASK_CLASSES)
    if unknown:
        raise ValueError(f"scene keys {sorted(unknown)} unknown; expected some of {tuple(TASK_CLASSES)}.")
    # Every draw happens whether or not the scene fixes it, so fixing one label leaves the others' draws alone.
    organ = int(rng.integers(len(config.organs)))
    organ = ORGANS.index(config.organs[organ])
    label = int(rng.choice(len(CLASS_NAMES), p=np.asarray(config.class_probs)))
    solid = SOLID_LESIONS[int(rng.integers(len(SOLID_LESIONS)))]
    margin = int(rng.integers(len(MARGINS)))
    grade = int(rng.integers(len(GRADES)))
    if "organ" in scene:
        organ = _name_index("organ", scene["organ"])
    if "lesion" in scene:
        label = _name_index("lesion", scene["lesion"])
    if "margin" in scene:
        margin = _name_index("margin", scene["margin"])
        if "lesion" not in scene:
            label = solid
        elif label not in SOLID_LESIONS:
            raise ValueError(f"scene={scene!r}: a margin needs a solid lesion "
                             f"({', '.join(CLASS_NAMES[c] for c in SOLID_LESIONS)}).")
    if "grade" in scene:
        grade = _name_index("grade", scene["grade"])
    return label, organ, (margin if label in SOLID_LESIONS else -1), grade


def _draw_acquisition(rng: np.random.Generator, config: SimulatorConfig, organ: int | None) -> tuple:
    """Probe, pulse, display and overlay; the probe among the organ's natural ones (``organ=None``: any)."""
    natural = [k for k in config.geometries if organ is not None and ORGANS[organ] in PROBES[k].natural_organs]
    kinds = natural or list(config.geometries)  # an organ outside its probes' list: any allowed probe
    kind = kinds[int(rng.integers(len(kinds)))]
    probe = PROBES[kind]
    geometry = ScanGeometry(kind, probe.depths_mm[int(rng.integers(len(probe.depths_mm)))],
                            probe.spans[int(rng.integers(len(probe.spans)))])
    f_hi = highest_frequency(probe, geometry.depth_mm)
    f_lo = max(probe.frequency_mhz[0], 0.7 * f_hi)
    pulse = dict(frequency_mhz=_u(rng, (f_lo, f_hi)), bandwidth=_u(rng, config.fractional_bandwidth),
                 f_number=_u(rng, config.f_number), focal_mm=_u(rng, config.focal_depth) * geometry.depth_mm,
                 tgc_compensation=_u(rng, config.tgc_compensation))
    display = dict(dynamic_range_db=_u(rng, config.dynamic_range_db), gain_db=_u(rng, config.gain_db),
                   noise_db=_u(rng, config.noise_db))
    return geometry, pulse, display, bool(rng.random() < config.overlay_prob)


def sample_anatomy(anatomy_seed: int, config: SimulatorConfig, scene: dict | None = None,
                   acquisition_seed: int | None = None) -> Anatomy:
    """The scene and the acquisition of one image.

    Labels come first from the anatomy seed (``scene`` overrides), then the acquisition (probe, pulse, display,
    overlay) from the anatomy seed or, when given, from ``acquisition_seed``, then the layout in mm, which is
    fitted to the probe's field of view (so the lesion is always in view)."""
    rng = np.random.default_rng(derive_seed(anatomy_seed, 1))
    label, organ, margin, grade = _draw_scene_labels(rng, config, dict(scene or {}))
    if acquisition_seed is None:
        geometry, pulse, display, overlay = _draw_acquisition(rng, config, organ)
    else:  # one scanner for every anatomy: its probe does not depend on the organ
        acq_rng = np.random.default_rng(derive_seed(acquisition_seed, 1, 7))
        geometry, pulse, display, overlay = _draw_acquisition(acq_rng, config, None)
    layout = np.random.default_rng(derive_seed(anatomy_seed, 4))
    regions, host, lesion_site = SCENES[ORGANS[organ]](layout, geometry, grade, config)
    regions, lesion = _add_lesion(layout, regions, label, margin, geometry, host, lesion_site)
    return Anatomy(label, organ, margin, grade, geometry, tuple(regions), lesion, pulse, display, overlay, host)


# ------------------------------------------------------------------------------------------------ scenes
FLUID = dict(echo_db=-80.0, atten=0.02)  # urine, cyst fluid: no scatterers (the noise floor), ~no attenuation
BLOOD = dict(echo_db=-80.0, atten=0.18)


def _view_width(geometry: ScanGeometry, z: float) -> float:
    """Width of the field of view (mm) at depth ``z``."""
    if not geometry.is_fan:
        return geometry.span
    return 2 * (geometry.radius_mm + z) * np.sin(np.deg2rad(geometry.span) / 2)


def _smooth(rng: np.random.Generator, amp: tuple[float, float]) -> tuple:
    return ("smooth", _u(rng, amp), *rng.uniform(0.05, 0.25, 4), *rng.uniform(0, 6.3, 2))


def _body_wall(rng: np.random.Generator, fat_mm: tuple, muscle_mm: tuple) -> tuple[list[Region], float]:
    """Skin, subcutaneous fat with septa, a muscle layer with fibres; returns the regions and the depth below."""
    skin = _u(rng, (1.5, 2.5))
    fat = skin + _u(rng, fat_mm)
    muscle = fat + _u(rng, muscle_mm)
    wave = lambda depth: (depth, _u(rng, (0.0, 1.5)), _u(rng, (30, 90)), _u(rng, (0, 6.3)))  # noqa: E731
    regions = [
        Region("below", (-1e3, 0.0, 1.0, 0.0), Tissue(SEG["skin"], _u(rng, (3, 7)), 0.8)),
        Region("below", wave(skin), Tissue(SEG["fat"], _u(rng, (-9, -6)), 0.6,
                                           ("striated", 6.0, _u(rng, (1.2, 1.9)), _u(rng, (2, 5)), 0.0)),
               wall_db=8.0),
        Region("below", wave(fat), Tissue(SEG["muscle"], _u(rng, (-7, -4)), 1.0,
                                          ("striated", 5.0, _u(rng, (1.3, 1.8)), _u(rng, (1.0, 2.0)), 0.0)),
               wall_db=_u(rng, (9, 12)), wall_mm=1.0),
    ]
    return regions, muscle


def _host_tissue(rng: np.random.Generator, seg: int, base_db: float, base_atten: float, grade: int,
                 texture: tuple) -> tuple[Tissue, dict]:
    """The parenchyma the grade acts on: +4.5 dB and +0.35 dB/cm/MHz per grade (fatty-liver-like)."""
    echo = base_db + _u(rng, (-1.0, 1.0)) + 4.5 * grade
    atten = base_atten + _u(rng, (-0.05, 0.05)) + 0.35 * grade
    return Tissue(seg, echo, atten, texture), dict(seg=seg, echo_db=echo, atten=atten, normal_atten=base_atten)


def _liver(rng, geometry, grade, config):
    D = geometry.depth_mm
    regions, wall = _body_wall(rng, (6, 22) if geometry.is_fan else (3, 8), (6, 14) if geometry.is_fan else (3, 7))
    liver, host = _host_tissue(rng, SEG["liver"], 0.0, 0.5, grade, _smooth(rng, (0.5, 1.5)))
    regions.append(Region("below", (wall + _u(rng, (0.5, 2)), _u(rng, (0, 2)), _u(rng, (60, 150)), _u(rng, (0, 6.3))),
                          liver, wall_db=_u(rng, (8, 12)), wall_mm=0.8))
    # Diaphragm: a bright curved sheet deep in the view.
    dz = _u(rng, (0.78, 0.95)) * D
    radius = _u(rng, (80, 160))
    regions.append(Region("arc", (_u(rng, (-20, 20)), dz + radius, radius, _u(rng, (1.0, 1.8)), 1.2),
                          Tissue(SEG["diaphragm"], 14.0, 0.6)))
    # Portal veins (bright walls) and hepatic veins (no wall): tubes cut along (elongated) or across (round).
    lo, hi = wall + 0.1 * D, 0.8 * D
    for k in range(int(rng.integers(1, 3)) + int(rng.random() < config.vessel_prob)):
        radius = _u(rng, (2.0, 5.0)) * D / 130 if geometry.is_fan else _u(rng, (1.5, 3.0))
        cz = _u(rng, (lo, hi))
        cx = _u(rng, (-0.35, 0.35)) * _view_width(geometry, cz)
        length = radius * (_u(rng, (3.0, 7.0)) if rng.random() < 0.6 else _u(rng, (1.0, 1.5)))
        regions.append(Region("ellipse", (cx, cz, length, radius, _u(rng, (-0.7, 0.7))),
                              Tissue(SEG["vessel"], **BLOOD), 12.0 if k % 2 == 0 else None, 0.8))
    return regions, host, dict(z=(wall + 0.15 * D, 0.75 * D), x=0.3)


def _kidney(rng, geometry, grade, config):
    D = geometry.depth_mm
    regions, wall = _body_wall(rng, (6, 18), (6, 12))
    liver, host = _host_tissue(rng, SEG["liver"], 0.0, 0.5, grade, _smooth(rng, (0.5, 1.5)))
    regions.append(Region("below", (wall + 1.0, _u(rng, (0, 2)), _u(rng, (60, 150)), _u(rng, (0, 6.3))), liver,
                          wall_db=10.0, wall_mm=0.8))
    cz = _u(rng, (0.5, 0.62)) * D
    width = _view_width(geometry, cz)
    rx = min(_u(rng, (45, 60)), 0.42 * width)
    rz = min(rx * _u(rng, (0.42, 0.55)), 0.3 * D)
    rot, cx = _u(rng, (-0.35, 0.35)), _u(rng, (-0.08, 0.08)) * width
    fat = 3.0 + 2.0 * D / 150
    regions.append(Region("ellipse", (cx, cz, rx + fat, rz + fat, rot), Tissue(SEG["fat"], 4.0, 0.6)))
    cortex = Tissue(SEG["kidney_cortex"], _u(rng, (-6, -3)), 0.6, _smooth(rng, (0.3, 0.8)))
    regions.append(Region("ellipse", (cx, cz, rx, rz, rot), cortex, wall_db=13.0, wall_mm=0.8))
    for k in range(int(rng.integers(4, 7))):  # medullary pyramids around the sinus
        a = np.pi * (k + 0.5) / 6 + _u(rng, (-0.15, 0.15)) + (np.pi if rng.random() < 0.3 else 0)
        u, v = 0.62 * np.cos(a), 0.62 * np.sin(a)
        px = cx + np.cos(rot) * u * rx - np.sin(rot) * v * rz
        pz = cz + np.sin(rot) * u * rx + np.cos(rot) * v * rz
        regions.append(Region("ellipse", (px, pz, 0.17 * rx, 0.22 * rz, rot + a),
                              Tissue(SEG["renal_medulla"], cortex.echo_db - 6.0, 0.6)))
    regions.append(Region("ellipse", (cx, cz, 0.5 * rx, 0.42 * rz, rot),
                          Tissue(SEG["renal_sinus"], _u(rng, (8, 11)), 0.8, _smooth(rng, (1.0, 2.0))),
                          margin=("lobulated", int(rng.integers(3, 6)), 0.2, _u(rng, (0, 6.3)))))
    # The lesion sits in the cortex (or the liver above): its site is given as an ellipse ring.
    return regions, host, dict(ellipse=(cx, cz, rx, rz, rot), tissue=cortex, fill=0.6, offset=0.62)


def _thyroid(rng, geometry, grade, config):
    D = geometry.depth_mm
    skin = _u(rng, (1.2, 2.0))
    fat = skin + _u(rng, (1.5, 4.0))
    strap = fat + _u(rng, (3.0, 5.0))
    regions = [
        Region("below", (-1e3, 0.0, 1.0, 0.0), Tissue(SEG["skin"], _u(rng, (3, 7)), 0.8)),
        Region("below", (skin, 0.3, 40.0, 0.0), Tissue(SEG["fat"], _u(rng, (-9, -6)), 0.6), wall_db=8.0),
        Region("below", (fat, 0.5, 50.0, _u(rng, (0, 6.3))),
               Tissue(SEG["muscle"], _u(rng, (-8, -5)), 1.0, ("striated", 4.0, 1.5, 1.2, 0.0)),
               wall_db=10.0, wall_mm=0.8),
        Region("below", (strap, 0.8, 60.0, _u(rng, (0, 6.3))), Tissue(SEG["tissue"], _u(rng, (-4, -2)), 0.7,
                                                                       _smooth(rng, (0.5, 1.5))), wall_db=9.0),
    ]
    side = 1.0 if rng.random() < 0.5 else -1.0  # left or right lobe: trachea medial, carotid lateral
    rz = _u(rng, (7.0, 9.5))
    rx = _u(rng, (9.0, 12.0))
    cz = strap + rz + _u(rng, (0.5, 1.5))
    cx = side * _u(rng, (-2.0, 2.0))
    thyroid, host = _host_tissue(rng, SEG["thyroid"], 3.0, 0.5, grade, _smooth(rng, (0.3, 0.8)))
    regions.append(Region("ellipse", (cx, cz, rx, rz, _u(rng, (-0.15, 0.15))), thyroid, wall_db=10.0,
                          wall_mm=0.7))
    # Carotid (round, bright wall) and jugular vein (oval) lateral; trachea medial (air: bright arc + shadow).
    rc = _u(rng, (3.0, 4.0))
    carotid_x = cx - side * (rx + rc + _u(rng, (0.0, 2.0)))
    regions.append(Region("ellipse", (carotid_x, cz + _u(rng, (0, 3)), rc, rc, 0.0), Tissue(SEG["vessel"], **BLOOD),
                          wall_db=14.0, wall_mm=0.8))
    regions.append(Region("ellipse", (carotid_x - side * _u(rng, (2, 5)), strap + _u(rng, (2.5, 4)),
                                      _u(rng, (3.5, 5.5)), _u(rng, (1.5, 3.0)), 0.0),
                          Tissue(SEG["vessel"], **BLOOD), wall_db=8.0, wall_mm=0.5))
    rt = _u(rng, (8.0, 10.0))
    trachea_x = cx + side * (rx + rt * _u(rng, (0.9, 1.1)))
    tz = strap + _u(rng, (1.0, 3.0))
    # Air: the anterior wall is a bright arc; below it only reverberations (horizontal bands) and a shadow.
    regions.append(Region("ellipse", (trachea_x, tz + rt, rt, rt, 0.0),
                          Tissue(SEG["trachea"], -12.0, 1.5, ("striated", 14.0, 0.0, 2.4, 0.0))))
    regions.append(Region("arc", (trachea_x, tz + rt, rt, 0.8, 1.1), Tissue(SEG["trachea"], 16.0, 1.0)))
    # Deep: prevertebral muscle and the vertebral body's bright surface with its shadow.
    deep = cz + rz + _u(rng, (2, 5))
    regions.append(Region("below", (deep, 1.0, 40.0, _u(rng, (0, 6.3))),
                          Tissue(SEG["muscle"], -6.0, 1.0, ("striated", 4.0, 1.4, 1.5, 0.0)), wall_db=9.0))
    bone_z = deep + _u(rng, (6, 10))
    regions.append(Region("ellipse", (trachea_x * 0.7, bone_z + 25, 28, 25, 0.0), Tissue(SEG["bone"], -20.0, 25.0),
                          wall_db=22.0, wall_mm=1.5))
    del D
    return regions, host, dict(ellipse=(cx, cz, rx, rz, 0.0))


def _bladder(rng, geometry, grade, config):
    D = geometry.depth_mm
    regions, wall = _body_wall(rng, (6, 18), (6, 12))
    tissue, host = _host_tissue(rng, SEG["tissue"], -1.0, 0.6, grade, _smooth(rng, (0.8, 2.0)))
    host["normal_atten"] = 0.45  # the TGC is turned down for the urine's path (less posterior over-enhancement)
    regions.append(Region("below", (wall + 1.0, _u(rng, (0, 2)), _u(rng, (60, 150)), _u(rng, (0, 6.3))), tissue,
                          wall_db=9.0, wall_mm=0.8))
    rz = _u(rng, (0.13, 0.2)) * D
    cz = wall + rz + _u(rng, (2, 8))
    rx = min(rz * _u(rng, (1.2, 1.8)), 0.42 * _view_width(geometry, cz))
    cx = _u(rng, (-0.08, 0.08)) * _view_width(geometry, cz)
    thick = _u(rng, (2.5, 4.5))
    squarish = ("lobulated", 4, _u(rng, (0.05, 0.1)), -np.pi / 2)  # rounded-rectangle outline
    regions.append(Region("ellipse", (cx, cz, rx + thick, rz + thick, 0.0), Tissue(SEG["bladder"], 6.0, 0.8),
                          margin=squarish))
    regions.append(Region("ellipse", (cx, cz, rx, rz, 0.0), Tissue(SEG["bladder"], **FLUID), margin=squarish))
    return regions, host, dict(z=(cz + rz + thick + 0.05 * D, 0.85 * D), x=0.25)


def _muscle(rng, geometry, grade, config):
    D = geometry.depth_mm
    regions, wall = _body_wall(rng, (0.06 * D, 0.15 * D), (0.08 * D, 0.14 * D))
    angle = _u(rng, (1.25, 1.45)) * (1 if rng.random() < 0.5 else -1)  # pennation: fibres near-horizontal
    belly, host = _host_tissue(rng, SEG["muscle"], -4.0, 0.9, grade,
                               ("striated", 4.0, angle, _u(rng, (0.015, 0.03)) * D, 0.0))
    depth = wall
    bellies = int(rng.integers(2, 4))
    bone_top = _u(rng, (0.78, 0.9)) * D
    for k in range(bellies):
        regions.append(Region("below", (depth, _u(rng, (0, 0.02)) * D, _u(rng, (1.0, 2.5)) * D, _u(rng, (0, 6.3))),
                              belly, wall_db=_u(rng, (11, 14)), wall_mm=0.012 * D + 0.3))
        depth += (bone_top - wall) / bellies * _u(rng, (0.8, 1.1))
        if k == 0 and rng.random() < config.vessel_prob:  # a vessel along the fascia, cut lengthwise
            regions.append(Region("ellipse", (_u(rng, (-0.2, 0.2)) * D, depth - 0.02 * D, _u(rng, (0.12, 0.25)) * D,
                                              0.012 * D, _u(rng, (-0.15, 0.15))), Tissue(SEG["vessel"], **BLOOD),
                                  11.0, 0.01 * D + 0.3))
    radius = _u(rng, (0.8, 1.6)) * D
    regions.append(Region("ellipse", (_u(rng, (-0.1, 0.1)) * D, bone_top + radius, radius, radius, 0.0),
                          Tissue(SEG["bone"], -20.0, 25.0), wall_db=23.0, wall_mm=0.02 * D + 0.6))
    return regions, host, dict(z=(wall + 0.08 * D, bone_top - 0.08 * D), x=0.3)


SCENES = {"liver": _liver, "kidney": _kidney, "thyroid": _thyroid, "bladder": _bladder, "muscle": _muscle}


def _add_lesion(rng: np.random.Generator, regions: list[Region], label: int, margin: int, geometry: ScanGeometry,
                host: dict, site: dict) -> tuple[list[Region], dict | None]:
    """The lesion (sizes in mm, contrast in dB relative to its host), placed in the scene's lesion site."""
    # Drawn in a fixed order for every class, so the class does not shift the other draws.
    deep_probe = geometry.is_fan
    diameter = _u(rng, (12.0, 30.0) if deep_probe else (5.0, 15.0))
    calc_diameter = _u(rng, (2.5, 5.0) if deep_probe else (1.0, 4.0))
    aspect = _u(rng, (0.7, 1.0))
    rot = _u(rng, (0, np.pi))
    solid_db = _u(rng, (6.0, 15.0))
    calc_db = _u(rng, (25.0, 35.0))
    lobes, lobe_amp, phase = int(rng.integers(3, 6)), _u(rng, (0.18, 0.28)), _u(rng, (0, 6.3))
    spikes, spike_len = int(rng.integers(8, 15)), _u(rng, (0.35, 0.6))
    jitter = tuple(rng.uniform(0.5, 1.0, 16))
    pos = rng.uniform(0, 1, 2)
    if not label:
        return regions, None
    if label == 4:
        diameter = calc_diameter
    r_eq = diameter / 2
    rx, rz = r_eq / np.sqrt(aspect), r_eq * np.sqrt(aspect)
    if "ellipse" in site:  # inside an organ outline (kidney cortex, thyroid lobe): shrink to fit
        cx, cz, ox, oz, orot = site["ellipse"]
        scale = min(1.0, site.get("fill", 0.5) * min(ox, oz) / max(rx, rz))
        rx, rz, r_eq = rx * scale, rz * scale, r_eq * scale
        # Along the long axis, off the centre (the kidney's poles, away from its sinus), keeping a lesion radius
        # of host around it.
        side = 1.0 if pos[0] < 0.5 else -1.0
        u = side * min((site.get("offset", 0.35) + 0.15 * pos[1]) * ox, max(0.0, ox - 1.5 * rx))
        v = (2 * (pos[0] % 0.5) - 0.5) * 0.3 * max(0.0, oz - 2 * rz)
        x = cx + np.cos(orot) * u - np.sin(orot) * v
        z = cz + np.sin(orot) * u + np.cos(orot) * v
    else:
        z_lo, z_hi = site["z"]
        z_lo, z_hi = z_lo + rz, max(z_hi - rz, z_lo + rz)
        z = z_lo + pos[1] * (z_hi - z_lo)
        x = (pos[0] - 0.5) * 2 * site["x"] * _view_width(geometry, z)
    shape = None
    if label in SOLID_LESIONS and MARGINS[margin] == "lobulated":
        shape = ("lobulated", lobes, lobe_amp, phase)
    elif label in SOLID_LESIONS and MARGINS[margin] == "spiculated":
        shape = ("spiculated", spikes, spike_len, phase, jitter)
    host_db, host_atten = (site["tissue"].echo_db, site["tissue"].atten) if "tissue" in site else \
        (host["echo_db"], host["atten"])  # contrast relative to the tissue around the lesion
    if label == 1:
        tissue, contrast, wall = Tissue(SEG["cyst"], **FLUID), FLUID["echo_db"] - host_db, host_db + 9.0
    elif label in SOLID_LESIONS:
        contrast = -solid_db if label == 2 else solid_db
        tissue, wall = Tissue(LESION_SEGMENT[label], host_db + contrast, host_atten), None
    else:
        contrast = calc_db
        # Strongly attenuating (the shadow behind it), though not so much that it hides its own echo.
        tissue, wall = Tissue(SEG["calcification"], host_db + contrast, 6.0), None
    region = Region("ellipse", (float(x), float(z), float(rx), float(rz), rot), tissue, wall_db=wall,
                    wall_mm=0.5, margin=shape)
    lesion = dict(x_mm=float(x), z_mm=float(z), diameter_mm=float(2 * r_eq), contrast_db=float(contrast),
                  region=region, harmonics=margin_harmonics(shape))
    return regions + [region], lesion


# ------------------------------------------------------------------------------------------------ physics
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
    """One B-mode image (see the module docstring for the returned keys, ``scene`` and ``labels``).

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
    x, z, d = _acquisition_points(geometry, grid)
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


# ------------------------------------------------------------------------------------------------ overlays
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


# ------------------------------------------------------------------------------------------------ source
class SyntheticUltrasoundSource:
    """Grain random-access source: ``index -> render(anatomy_seed(seed, index), speckle_seed(seed, index))``.

    Picklable and deterministic, so an epoch of ``num_examples`` images is the same on every machine and in every
    worker process. ``speckle_seed_offset`` renders the same anatomies under new speckle; ``scene`` fixes labels
    (``render``'s ``scene``) for every image.
    """

    def __init__(self, num_examples: int, seed: int = 0, config: SimulatorConfig = SimulatorConfig(),
                 speckle_seed_offset: int = 0, scene: dict | None = None):
        self.num_examples, self.seed, self.config = int(num_examples), int(seed), config
        self.speckle_seed_offset = int(speckle_seed_offset)
        self.scene = dict(scene) if scene else None

    def __len__(self) -> int:
        return self.num_examples

    def seeds(self, index: int) -> tuple[int, int]:
        return derive_seed(self.seed, index, 0), derive_seed(self.seed, index, 1, self.speckle_seed_offset)

    def render_index(self, index: int) -> dict[str, Any]:
        """``render``'s output for image ``index`` (a subclass renders other views: data/framing.py)."""
        anatomy_seed, speckle_seed = self.seeds(index)
        return render(anatomy_seed, speckle_seed, self.config, scene=self.scene)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} synthetic images")
        out = self.render_index(index)
        return dict(image=out["image"], label=np.int32(out["label"]), scan_mask=out["scan_mask"],
                    segmentation=out["segmentation"], index=np.int32(index),
                    **{f"label_{task}": np.int32(v) for task, v in out["labels"].items()})

    def __repr__(self) -> str:
        return (f"SyntheticUltrasoundSource(num_examples={self.num_examples}, seed={self.seed}, "
                f"speckle_seed_offset={self.speckle_seed_offset}, scene={self.scene}, config={self.config})")


# ------------------------------------------------------------------------------------------------ contrast
def lesion_cnr(image: np.ndarray, segmentation: np.ndarray, code: int, scan_mask: np.ndarray,
               gap: int = 1, width: int | None = None) -> float:
    """``|mean inside - mean of a ring around| / std of the ring`` on the B-mode image.

    The ring: pixels between ``gap`` and ``gap + width`` pixels outside the lesion (``width`` defaults to half the
    lesion's equivalent radius, at least 2 pixels), inside the scan region. NaN without lesion pixels."""
    import scipy.ndimage

    inside = segmentation == code
    n = int(inside.sum())
    if n == 0:
        return float("nan")
    width = width or max(2, round(0.5 * np.sqrt(n / np.pi)))
    near = scipy.ndimage.binary_dilation(inside, iterations=gap)
    ring = scipy.ndimage.binary_dilation(inside, iterations=gap + width) & ~near & scan_mask
    values = image.astype(np.float64)
    if ring.sum() < 4:
        return float("nan")
    return float(abs(values[inside].mean() - values[ring].mean()) / max(values[ring].std(), 1e-6))


def cnr_table(sizes: tuple[int, ...] = (64, 224), num: int = 200, seed: int = 0) -> dict[int, dict[str, float]]:
    """Median lesion CNR per class and output size over ``num`` images (the same anatomies at every size)."""
    table = {}
    for size in sizes:
        config = SimulatorConfig(image_size=size, overlay_prob=0.0)
        source = SyntheticUltrasoundSource(num, seed, config)
        values: dict[str, list[float]] = {name: [] for name in CLASS_NAMES[1:]}
        for i in range(num):
            a, s = source.seeds(i)
            out = render(a, s, config)
            if out["label"]:
                values[CLASS_NAMES[out["label"]]].append(
                    lesion_cnr(out["image"], out["segmentation"], LESION_SEGMENT[out["label"]], out["scan_mask"]))
        table[size] = {name: float(np.nanmedian(v)) if v else float("nan") for name, v in values.items()}
    return table


# ------------------------------------------------------------------------------------------------ CLI
def contact_sheet(path: str | Path, num: int = 24, seed: int = 0, size: int = 224, columns: int = 6) -> Path:
    """A grid of images titled with organ, probe, lesion, margin and grade (no outline: the lesion must be seen),
    plus a row: one anatomy under 6 speckle seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = SimulatorConfig(image_size=size)
    source = SyntheticUltrasoundSource(num, seed, config)
    rows = -(-num // columns) + 1
    fig, axes = plt.subplots(rows, columns, figsize=(2.3 * columns, 2.45 * rows), dpi=90)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < num:
            a, s = source.seeds(i)
            ex = render(a, s, config)
            ax.imshow(ex["image"], cmap="gray", vmin=0, vmax=255)
            p = ex["params"]
            margin = f" {p['margin']}" if p["margin"] else ""
            ax.set_title(f"{p['organ']} ({p['geometry'][:3]}, {p['depth_mm']:.0f} mm)\n{p['lesion']}{margin}, "
                         f"grade {p['grade']}", fontsize=7)
    anatomy_seed = source.seeds(1)[0]
    first_speckle_cell = (rows - 1) * columns
    for k, ax in enumerate(axes.flat[first_speckle_cell:]):
        ax.imshow(render(anatomy_seed, 1000 + k, config)["image"], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"same anatomy, speckle {k}", fontsize=7)
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
                            label=ex["label"], class_name=CLASS_NAMES[ex["label"]], labels=ex["labels"],
                            params=_jsonable(ex["params"])))
    elapsed = time.perf_counter() - start
    (out / "labels.json").write_text(json.dumps(dict(class_names=CLASS_NAMES, task_classes=TASK_CLASSES,
                                                     segmentation_names=SEGMENTATION_NAMES, examples=records),
                                                indent=1))
    counts = np.bincount([r["label"] for r in records], minlength=len(CLASS_NAMES))
    return dict(num=num, size=size, seed=seed, out=str(out), seconds=round(elapsed, 2),
                classes={CLASS_NAMES[c]: int(n) for c, n in enumerate(counts)})


def prerender(out: str | Path, num: int, config: SimulatorConfig = SimulatorConfig(), seed: int = 0,
              shard_size: int = 1024, progress: bool = True,
              source: SyntheticUltrasoundSource | None = None) -> dict[str, Any]:
    """Render ``SyntheticUltrasoundSource(num, seed, config)`` once into the prepared ArrayRecord format
    (``data/prepare.py``: shards, ``manifest.json``; one file row per image, dataset ``synthetic``, label = lesion
    class), for accelerator runs: train with ``config.data.source='prepared'``, ``config.data.paths=[out]``.
    ``source``: another simulator source to render instead (e.g. data/framing.py's mixture of framed views), whose
    own image count, seed and settings then apply."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / shards.PROGRESS).exists() or (out / shards.MANIFEST).exists():
        raise FileExistsError(f"{out} already holds prepared data; pre-render into an empty directory")
    if source is None:
        source = SyntheticUltrasoundSource(num, seed, config)
    num, seed, config = len(source), source.seed, source.config
    start, shard = time.perf_counter(), None
    with open(out / shards.PROGRESS, "a") as progress_file:
        for i in range(num):
            if shard is None:
                shard = shards.ShardWriter(out, i // shard_size, shards.WRITER_OPTIONS, progress_file)
            ex = source[i]
            row = dict(dataset="synthetic", file=f"{i:08d}", label=int(ex["label"]), split="train_val")
            shard.add_file(row, [(ex["image"], ex["scan_mask"])], i)
            if shard.records == shard_size or i == num - 1:
                shard.close()
                shard = None
            if progress and (i + 1) % 500 == 0:
                print(f"[prerender] {i + 1}/{num} images, {(i + 1) / (time.perf_counter() - start):.0f}/s",
                      flush=True)
    settings = dict(source="synthetic", simulator=_jsonable(dataclasses.asdict(config)), seed=seed, num=num,
                    view=repr(source))
    manifest = shards.write_manifest(out, {}, settings)
    assert manifest["total"]["frames"] == num
    return dict(out=str(out), images=num, shards=len(manifest["shards"]),
                seconds=round(time.perf_counter() - start, 2))


def _jsonable(params: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a sample of synthetic ultrasound images to disk, or print "
                                                 "the lesion CNR table.")
    parser.add_argument("--out", default=None, help="output directory (PNG sample)")
    parser.add_argument("--num", type=int, default=100, help="number of images")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contact-sheet", default=None, help="also write a contact-sheet PNG here")
    parser.add_argument("--cnr-table", action="store_true", help="print the median lesion CNR by class and size")
    parser.add_argument("--sizes", default="64,96,224", help="output sizes of the CNR table")
    parser.add_argument("--arrayrecord", default=None, help="pre-render --num images of --size into this directory "
                        "in the prepared ArrayRecord format (train with config.data.source='prepared')")
    parser.add_argument("--speckle-share", default=None, metavar="SIZE/PATCH,...", help="print the speckle share "
                        "of the pixel targets at these input sizes and patch sizes (data/speckle_share.py)")
    parser.add_argument("--anatomies", type=int, default=32, help="anatomies of the speckle share")
    args = parser.parse_args(argv)
    if not (args.out or args.contact_sheet or args.cnr_table or args.arrayrecord or args.speckle_share):
        parser.error("nothing to do: give --out, --contact-sheet, --cnr-table, --arrayrecord or --speckle-share")
    if args.arrayrecord:
        summary = prerender(args.arrayrecord, args.num, SimulatorConfig(image_size=args.size), args.seed)
        print(f"pre-rendered {summary['images']} images into {summary['shards']} shards in {summary['out']} "
              f"({summary['seconds']}s)")
    if args.out:
        summary = write_sample(args.out, args.num, args.size, args.seed)
        print(f"wrote {summary['num']} images of {summary['size']}x{summary['size']} to {summary['out']} in "
              f"{summary['seconds']}s; classes {summary['classes']}")
    if args.contact_sheet:
        contact_sheet(args.contact_sheet, min(args.num, 24), args.seed, args.size)
        print(f"wrote {args.contact_sheet}")
    if args.cnr_table:
        sizes = tuple(int(s) for s in args.sizes.split(","))
        table = cnr_table(sizes, args.num, args.seed)
        names = CLASS_NAMES[1:]
        print("| size | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for size, row in table.items():
            print(f"| {size} | " + " | ".join(f"{row[n]:.2f}" for n in names) + " |")
    if args.speckle_share:
        from usjepa_jax.data.speckle_share import print_share_table  # it imports this module

        print_share_table(args.speckle_share, args.anatomies, args.seed)


if __name__ == "__main__":
    main()
