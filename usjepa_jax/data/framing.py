"""Views framed as clinical datasets frame them (DESIGN.md, section C, "Framing").

A sonographer building a lesion dataset frames the finding: the lesion fills a good part of the frame. A whole
scan at the model's input shows a lesion as a few pixels (at 64 px it covers about 1% of the frame), which is
not how breast, thyroid or liver lesion datasets look. A *framed view* is a window around the lesion site,
cut from a render at a higher resolution (``render_size``, so the window keeps its detail) and resized to the
simulator config's ``image_size``:

- the window is a square of side ``fov`` x the site's diameter, centred on the lesion's centre moved by a
  position jitter (uniform in ``[-position_jitter, position_jitter]`` diameters, each axis) and scaled by a
  log-uniform factor in ``[1 / (1 + scale_jitter), 1 + scale_jitter]``; the jitter is the difficulty dial
  (with none the finding is always at the centre, at one scale);
- the *site's diameter* does not depend on the lesion class: it is that of the solid lesion the anatomy would
  hold (cysts and solid lesions share the draw; a calcification, 1-5 mm, sits in the window of the solid
  lesion it replaces), so the window's scale, and with it the speckle grain's size in the frame, tells nothing
  about the class;
- "none" (no lesion) is framed on the would-be site: where this anatomy's lesion would have been placed;
- the window's jitter is drawn from the anatomy seed (``FRAMING_STREAM``): one anatomy under new speckle keeps
  its window; every window is the same for one seed;
- image, scan mask and segmentation are cut by the same window (image and mask bilinear with anti-aliasing as
  ``ToModelInput``, the segmentation nearest); parts of the window outside the field of view are black,
  ``outside`` in the segmentation;
- no burned-in overlays: text and rulers sit at the frame's edges, out of the window, and the lesion calipers
  would give the class away.

Where it is used (``config.data.framing``, ``default_framing_config``): the simulated tasks named in
``framing.tasks`` are framed (``lesion`` and ``margin`` by default; ``organ`` and ``grade`` stay whole scans; an
empty ``tasks`` gives the whole-scan tasks as before), and ``framing.fraction`` of the pretraining images are
framed views (``FramedMixtureSource``; 0 = whole scans only), as clinical archives hold both.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from PIL import Image

from usjepa_jax.data.seeding import derive_seed
from usjepa_jax.data.simulator.config import CLASS_NAMES, SimulatorConfig
from usjepa_jax.data.simulator.render import render
from usjepa_jax.data.simulator.scenes import sample_anatomy
from usjepa_jax.data.simulator.source import SyntheticUltrasoundSource

FRAMING_STREAM = 6  # anatomy-seed stream of the window's jitter (the anatomy uses 1, 3 and 4)
MIXTURE_STREAM = 2  # index stream of the pretraining source's framed-or-whole draw (0, 1: anatomy and speckle)
SITE_CLASS = 2  # the solid lesion whose site and diameter frame every class (hypoechoic; cysts share its draw)
CALCIFIED = CLASS_NAMES.index("calcified")


def default_framing_config() -> dict[str, Any]:
    """``config.data.framing``: which tasks are framed, the pretraining mixture and the window's geometry."""
    return dict(
        tasks="lesion,margin",  # simulated tasks framed on the lesion site (comma separated; '' = whole scans)
        fraction=0.0,  # pretraining images that are framed views (the rest whole scans); 0 = whole scans only
        fov=2.5,  # window side, in site diameters
        position_jitter=0.5,  # window centre offset, uniform in +- this many diameters along each axis
        scale_jitter=0.2,  # window side times a log-uniform factor in [1 / (1 + j), 1 + j]
        render_size=256,  # framed views are cut from a render of this size (pixels), then resized
    )


@dataclasses.dataclass(frozen=True)
class Framing:
    """The window's geometry (see the module docstring); validated, so a bad value names its config key."""

    fov: float = 2.5
    position_jitter: float = 0.5
    scale_jitter: float = 0.2
    render_size: int = 256

    def __post_init__(self):
        checks = (("fov", self.fov > 0, "positive"), ("position_jitter", self.position_jitter >= 0, "at least 0"),
                  ("scale_jitter", self.scale_jitter >= 0, "at least 0"),
                  ("render_size", self.render_size >= 16, "at least 16 pixels"))
        for key, ok, expected in checks:
            if not ok:
                raise ValueError(f"config.data.framing.{key}={getattr(self, key)!r} is invalid: {expected}.")


def framing_config(data_config) -> dict[str, Any]:
    """``data_config.framing`` over the defaults (a run's saved config from before framing has none)."""
    cfg = default_framing_config()
    given = dict(data_config.get("framing") or {})
    unknown = set(given) - set(cfg)
    if unknown:
        raise ValueError(f"config.data.framing: unknown keys {sorted(unknown)}; known: {sorted(cfg)}.")
    cfg.update(given)
    return cfg


def validate(data_config, task_names: tuple[str, ...]) -> None:
    """Raise ValueError naming the ``config.data.framing`` key of any invalid value."""
    cfg = framing_config(data_config)
    framing_from_config(data_config)
    if not 0 <= cfg["fraction"] <= 1:
        raise ValueError(f"config.data.framing.fraction={cfg['fraction']!r} is invalid: between 0 and 1.")
    unknown = [t for t in framed_task_names(data_config) if t not in task_names]
    if unknown:
        raise ValueError(f"config.data.framing.tasks={cfg['tasks']!r}: unknown tasks {unknown}; known: "
                         f"{task_names} (comma separated, or '' for whole scans only).")


def framing_from_config(data_config) -> Framing:
    cfg = framing_config(data_config)
    return Framing(float(cfg["fov"]), float(cfg["position_jitter"]), float(cfg["scale_jitter"]),
                   int(cfg["render_size"]))


def framed_task_names(data_config) -> tuple[str, ...]:
    return tuple(t.strip() for t in str(framing_config(data_config)["tasks"]).split(",") if t.strip())


def task_framing(data_config, task: str) -> Framing | None:
    """The framing of simulated task ``task``, or None when it is shown as whole scans."""
    return framing_from_config(data_config) if task in framed_task_names(data_config) else None


# ------------------------------------------------------------------------------------------------ the window
def lesion_site(anatomy_seed: int, config: SimulatorConfig, scene: dict | None = None,
                acquisition_seed: int | None = None) -> dict[str, float]:
    """The site a framed view is centred on, in mm: the lesion's centre (``x_mm``, ``z_mm``) or, without a lesion,
    the would-be one's; ``diameter_mm``: the solid lesion's this anatomy would hold, whatever its class."""
    anatomy = sample_anatomy(anatomy_seed, config, scene, acquisition_seed)
    site = anatomy.lesion
    diameter = site["diameter_mm"] if site is not None else None
    if anatomy.label in (0, CALCIFIED):  # cysts and solid lesions share the size draw; these two do not
        # The same anatomy with a solid lesion: every draw is made whatever the class, so the scene, probe and
        # layout are this anatomy's, and its lesion lies where this one's would.
        solid = sample_anatomy(anatomy_seed, config, {**(scene or {}), "lesion": SITE_CLASS},
                                         acquisition_seed).lesion
        site, diameter = site or solid, solid["diameter_mm"]
    side, top, _ = anatomy.geometry.field_mm()
    return dict(x_mm=site["x_mm"], z_mm=site["z_mm"], diameter_mm=diameter, field_mm=side, top_mm=top)


def window(site: dict[str, float], framing: Framing, anatomy_seed: int) -> dict[str, float]:
    """The jittered square window around ``site`` (mm): centre ``x_mm``, ``z_mm`` and ``side_mm``."""
    rng = np.random.default_rng(derive_seed(anatomy_seed, FRAMING_STREAM))
    dx, dz = rng.uniform(-1.0, 1.0, 2) * framing.position_jitter * site["diameter_mm"]
    scale = math.exp(rng.uniform(-1.0, 1.0) * math.log1p(framing.scale_jitter))
    return dict(x_mm=site["x_mm"] + float(dx), z_mm=site["z_mm"] + float(dz),
                side_mm=framing.fov * site["diameter_mm"] * scale)


def crop(array: np.ndarray, box: tuple[float, float, float, float], size: int, resample: int) -> np.ndarray:
    """The ``box`` (left, top, right, bottom in pixels, may reach outside) of ``array`` resized to ``size``;
    outside the array is 0 (black; ``outside`` in the segmentation)."""
    h, w = array.shape
    pad = math.ceil(max(0.0, -box[0], -box[1], box[2] - w, box[3] - h)) + 1
    padded = np.pad(array, pad)
    shifted = tuple(v + pad for v in box)
    return np.asarray(Image.fromarray(padded).resize((size, size), resample, box=shifted))


def render_framed(anatomy_seed: int, speckle_seed: int, config: SimulatorConfig, framing: Framing, *,
                  scene: dict | None = None, acquisition_seed: int | None = None) -> dict[str, Any]:
    """A framed view: ``render``'s keys at ``config.image_size``, cut from a render at
    ``framing.render_size`` around the lesion site; ``params["window"]`` holds the window in mm."""
    big = dataclasses.replace(config, image_size=framing.render_size, overlay_prob=0.0)
    out = render(anatomy_seed, speckle_seed, big, scene=scene, acquisition_seed=acquisition_seed)
    site = lesion_site(anatomy_seed, big, scene, acquisition_seed)
    win = window(site, framing, anatomy_seed)
    px = framing.render_size / site["field_mm"]  # pixels per mm of the render
    cx, cy = (win["x_mm"] / site["field_mm"] + 0.5) * framing.render_size, (win["z_mm"] - site["top_mm"]) * px
    half = win["side_mm"] * px / 2
    box = (cx - half, cy - half, cx + half, cy + half)
    size = config.image_size
    image = crop(out["image"], box, size, Image.BILINEAR)
    mask = crop(out["scan_mask"].astype(np.uint8) * np.uint8(255), box, size, Image.BILINEAR) > 0
    segmentation = crop(out["segmentation"], box, size, Image.NEAREST)
    params = dict(out["params"], window=dict(win, site_diameter_mm=site["diameter_mm"]),
                  pixel_mm=win["side_mm"] / size, framed=True)
    return dict(out, image=image, scan_mask=mask, segmentation=segmentation, params=params)


# ------------------------------------------------------------------------------------------------ pretraining
class FramedMixtureSource(SyntheticUltrasoundSource):
    """The simulator's pretraining source with ``fraction`` of its images framed views (the others whole scans).

    Whether image ``index`` is framed is drawn from ``(seed, index)``: the mixture is the same on every machine
    and in every worker, and a framed view's window is fixed by its anatomy seed."""

    def __init__(self, num_examples: int, seed: int = 0,
                 config: SimulatorConfig = SimulatorConfig(), framing: Framing = Framing(),
                 fraction: float = 0.0, **kwargs):
        super().__init__(num_examples, seed, config, **kwargs)
        self.framing, self.fraction = framing, float(fraction)

    def is_framed(self, index: int) -> bool:
        draw = np.random.default_rng(derive_seed(self.seed, index, MIXTURE_STREAM)).random()
        return bool(draw < self.fraction)

    def render_index(self, index: int) -> dict[str, Any]:
        if not self.is_framed(index):
            return super().render_index(index)
        anatomy_seed, speckle_seed = self.seeds(index)
        return render_framed(anatomy_seed, speckle_seed, self.config, self.framing, scene=self.scene)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, framing={self.framing}, fraction={self.fraction})"
