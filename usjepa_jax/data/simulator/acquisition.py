"""The scanner: resolution (PSF widths) in physical units, scan geometry, acquisition grid, scan conversion.

The formulas (pulse-echo FWHMs, the grid's samples per FWHM, anti-aliased scan conversion) and why they were
chosen: ``docs/simulator.md``, Physics."""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from usjepa_jax.data.simulator.config import PROBES, Probe


SPEED_OF_SOUND = 1.540  # mm per microsecond (1540 m/s): lambda[mm] = SPEED_OF_SOUND / f[MHz]


def axial_fwhm_mm(frequency_mhz: float, bandwidth: float) -> float:
    """Range FWHM of the pulse-echo envelope: ``0.441 c / (B f)``."""
    return 0.441 * SPEED_OF_SOUND / (bandwidth * frequency_mhz)


def lateral_fwhm_mm(z_mm: np.ndarray | float, frequency_mhz: float, f_number: float, focal_mm: float,
                    aperture_mm: float) -> np.ndarray:
    """Pulse-echo lateral FWHM ``W(z)`` (docs/simulator.md): ``lambda F`` at the focus, widening away from it."""
    lam = SPEED_OF_SOUND / frequency_mhz
    z = np.asarray(z_mm, np.float64)
    f_tx = max(f_number, focal_mm / aperture_mm)  # transmit F-number at the focus
    s2 = ((z - focal_mm) / (3.5 * lam * f_tx**2)) ** 2
    f_eff = np.maximum(f_number, z / aperture_mm)
    return lam * f_eff * np.sqrt(2 * (1 + s2) / (2 + s2))


def highest_frequency(probe: Probe, depth_mm: float) -> float:
    """``min(f_max, P / D)``, at least the probe's lowest frequency."""
    return max(probe.frequency_mhz[0], min(probe.frequency_mhz[1], probe.penetration_mm_mhz / depth_mm))


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


def acquisition_points(geometry: ScanGeometry, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
