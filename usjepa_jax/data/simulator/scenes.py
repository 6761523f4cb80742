"""Scenes: one anatomy per seed (organ family, lesion, margin, grade) laid out in the probe's field of view."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from usjepa_jax.data.seeding import derive_seed
from usjepa_jax.data.simulator.acquisition import ScanGeometry, highest_frequency
from usjepa_jax.data.simulator.config import (CLASS_NAMES, GRADES, LESION_SEGMENT, MARGINS, ORGANS, PROBES, SEG,
                                              SOLID_LESIONS, TASK_CLASSES, SimulatorConfig)
from usjepa_jax.data.simulator.phantoms import Region, Tissue, margin_harmonics


def _u(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


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
