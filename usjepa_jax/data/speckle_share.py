"""The regime measure: how much of a pixel objective's targets the speckle alone decides (DESIGN.md, section C).

The paper's thesis (a latent target ignores speckle that a pixel target must predict) only acts where speckle is
a large part of the pixel targets. MAE's targets are per-patch normalised pixels (each patch minus its mean, over
its std) at the model's patch size. Render one anatomy under two speckle seeds (same anatomy seed, so the same
scene, probe and display), cut both images into those targets, and correlate corresponding patches: the
correlation is the share of a patch's normalised variance that the anatomy fixes, so

    speckle share = 1 - median over patches of corr(patch under speckle seed 1, patch under speckle seed 2).

If each patch is ``s + n`` with an anatomy part ``s`` and a speckle part ``n`` of equal variance under both
seeds and independent between them, the correlation is ``var(s) / (var(s) + var(n))`` and the share is the
speckle's share of the target variance. The median runs over the patches of every anatomy together; a patch
counts when it lies wholly inside the scan region of both images (outside is black, not a target worth the
name) and varies in both (a patch of anechoic fluid clipped to black has no normalised target).

- ``speckle_share(images_a, images_b, patch, masks)``: the measure on image pairs (tests give it known cases);
- ``target_correlations(targets_a, targets_b, keep)``: the same correlation on any per-patch targets (the stage-1
  options of ``objectives.pixel_targets``: ``experiments/teacher_targets.py``);
- ``simulator_speckle_share(render_size, image_size, patch, ...)``: on simulator renders;
- ``config_speckle_share(config)``: at a training config's render size, input size and patch size.

The simulator's CLI prints it: ``python -m usjepa_jax.data.synthetic --speckle-share 64/8,112/8,224/16``.
Burned-in overlays are off for the measure (text and rulers are the same under both seeds and not speckle).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from usjepa_jax.data.pipeline import ToModelInput
from usjepa_jax.data.seeding import derive_seed
from usjepa_jax.data.settings import simulator_config
from usjepa_jax.data.simulator.config import SimulatorConfig
from usjepa_jax.data.simulator.render import render

SHARE_STREAM = 300  # anatomy and speckle seeds of the measure: a stream of its own, not a task's or pretraining's
DEFAULT_ANATOMIES = 32


def normalized_patches(images: np.ndarray, patch: int) -> np.ndarray:
    """MAE's pixel targets: ``[N, H, W]`` -> ``[N, P, patch * patch]``, each patch minus its mean over its std
    (float64; a constant patch stays all zeros). ``H`` and ``W`` are cut to whole patches."""
    images = np.asarray(images, np.float64)
    n, h, w = images.shape
    gh, gw = h // patch, w // patch
    x = images[:, :gh * patch, :gw * patch].reshape(n, gh, patch, gw, patch).transpose(0, 1, 3, 2, 4)
    return _standardized(x.reshape(n, gh * gw, patch * patch))


def patch_correlations(images_a: np.ndarray, images_b: np.ndarray, patch: int,
                       masks: np.ndarray | None = None) -> np.ndarray:
    """Pearson correlation of corresponding ``patch``-pixel patches of two image stacks ``[N, H, W]``, over the
    patches that vary in both images and (given ``masks`` ``[N, H, W]``, true inside the scan) lie wholly inside
    the scan: a flat vector of correlations."""
    return target_correlations(normalized_patches(images_a, patch), normalized_patches(images_b, patch),
                               None if masks is None else patches_inside_scan(masks, patch))


def target_correlations(targets_a: np.ndarray, targets_b: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """Pearson correlation of corresponding per-patch target vectors ``[N, P, D]`` (any objective's: normalised
    pixels, low-passed pixels, HOG) over the patches that vary in both and where ``keep`` ``[N, P]`` is true: a
    flat vector of correlations."""
    a, b = (_standardized(np.asarray(t, np.float64)) for t in (targets_a, targets_b))
    varies = (np.abs(a).sum(axis=-1) > 0) & (np.abs(b).sum(axis=-1) > 0)
    return (a * b).mean(axis=-1)[varies if keep is None else varies & keep]


def _standardized(x: np.ndarray) -> np.ndarray:
    """Each vector of the last axis minus its mean, over its std (a constant vector stays all zeros)."""
    x = x - x.mean(axis=-1, keepdims=True)
    std = x.std(axis=-1, keepdims=True)
    return np.divide(x, std, out=np.zeros_like(x), where=std > 0)


def patches_inside_scan(masks: np.ndarray, patch: int) -> np.ndarray:
    """``[N, H, W]`` scan masks -> ``[N, P]``: true where every pixel of the patch is inside the scan."""
    m = np.asarray(masks, bool)
    n, h, w = m.shape
    gh, gw = h // patch, w // patch
    return m[:, :gh * patch, :gw * patch].reshape(n, gh, patch, gw, patch).all(axis=(2, 4)).reshape(n, -1)


def speckle_share(images_a: np.ndarray, images_b: np.ndarray, patch: int, masks: np.ndarray | None = None) -> float:
    """``1 - median`` correlation of corresponding normalised patches (see the module docstring): 0 when the
    pairs agree patch by patch up to a per-patch offset and scale, the speckle's variance share when they differ
    by independent speckle."""
    corr = patch_correlations(images_a, images_b, patch, masks)
    if corr.size == 0:
        raise ValueError("speckle_share: no patch lies inside the scan and varies in both images.")
    return float(1.0 - np.median(corr))


def speckle_pairs(render_size: int, image_size: int, num_anatomies: int = DEFAULT_ANATOMIES, seed: int = 0,
                  config: SimulatorConfig | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``num_anatomies`` anatomies, each rendered at ``render_size`` under two speckle seeds and resized to the
    model input ``image_size`` as the pipeline does (``ToModelInput``): images A and B ``[N, S, S]`` (uint8) and
    the masks where both are inside the scan."""
    config = dataclasses.replace(config or SimulatorConfig(), image_size=render_size, overlay_prob=0.0)
    to_input = ToModelInput(image_size)
    stacks: tuple[list, list, list] = ([], [], [])
    for i in range(num_anatomies):
        anatomy = derive_seed(seed, SHARE_STREAM, i, 0)
        pair = [to_input.map(dict(render(anatomy, derive_seed(seed, SHARE_STREAM, i, 1 + k), config),
                                  index=0)) for k in range(2)]
        stacks[0].append(pair[0]["image"][..., 0])
        stacks[1].append(pair[1]["image"][..., 0])
        stacks[2].append((pair[0]["scan_mask"] > 0) & (pair[1]["scan_mask"] > 0))
    return np.stack(stacks[0]), np.stack(stacks[1]), np.stack(stacks[2])


def simulator_speckle_share(render_size: int, image_size: int, patch: int, num_anatomies: int = DEFAULT_ANATOMIES,
                            seed: int = 0, config: SimulatorConfig | None = None) -> float:
    """The speckle share of simulator renders at ``render_size`` fed to a model at ``image_size`` / ``patch``."""
    images_a, images_b, masks = speckle_pairs(render_size, image_size, num_anatomies, seed, config)
    return speckle_share(images_a, images_b, patch, masks)


def config_speckle_share(config, num_anatomies: int = DEFAULT_ANATOMIES, seed: int = 0) -> float:
    """The speckle share of a training config: its simulator settings (``config.data.synthetic``, rendered at
    ``data.synthetic.image_size``), its input ``data.image_size`` and its encoder's patch (``model.variant``)."""
    from usjepa_jax.models.vit import parse_variant  # the model's package (flax) only for a training config

    sim = simulator_config(config.data)
    patch = parse_variant(config.model.variant)["patch_size"]
    return simulator_speckle_share(sim.image_size, config.data.image_size, patch, num_anatomies, seed, sim)


def print_share_table(specs: str, num_anatomies: int = DEFAULT_ANATOMIES, seed: int = 0) -> dict[str, float]:
    """``specs`` ``"64/8,112/8"`` (input size / patch size, rendered at the input size): prints a markdown table
    of their speckle shares and returns it."""
    table = {}
    print(f"| input px / patch | tokens | speckle share ({num_anatomies} anatomies, seed {seed}) |")
    print("|---|---|---|")
    for spec in (s.strip() for s in specs.split(",") if s.strip()):
        try:
            size, patch = (int(v) for v in spec.split("/"))
        except ValueError:
            raise ValueError(f"speckle share: {spec!r} is not SIZE/PATCH (e.g. 112/8)") from None
        table[spec] = simulator_speckle_share(size, size, patch, num_anatomies, seed)
        print(f"| {size} / {patch} | {(size // patch) ** 2} | {table[spec]:.3f} |", flush=True)
    return table
