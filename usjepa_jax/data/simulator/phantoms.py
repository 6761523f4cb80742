"""Phantoms: tissue regions (shape, margin, echogenicity, attenuation) painted onto the acquisition points."""

from __future__ import annotations

import dataclasses

import numpy as np


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
