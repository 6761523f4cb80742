"""The simulator's settings: the label names of its tasks, the probe presets and ``SimulatorConfig``.

Tasks (``TASK_CLASSES``): ``lesion`` (none / cyst / hypoechoic / hyperechoic / calcified), ``organ`` (scene
families with their own layout), ``margin`` of a solid lesion (smooth oval / lobulated / spiculated), ``grade``
(3 diffuse grades of the organ's parenchyma). ``SEGMENTATION_NAMES``: the tissue codes of the segmentation map.
"""

from __future__ import annotations

import dataclasses


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


def jsonable(params: dict) -> dict:
    """A parameter dict (``render``'s ``params``, a ``SimulatorConfig`` as a dict), its tuples as lists, for JSON."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}
