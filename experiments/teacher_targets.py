"""The speckle share of each stage-1 reconstruction target (``loss.pixel_target``): how much of what a pixel teacher
must predict the speckle alone decides.

    python experiments/teacher_targets.py                       # 112 px / patch 8, 32 anatomies x seeds 0,1,2
    python experiments/teacher_targets.py --size=224 --patch=16 --sigmas=2,4

The measure of ``data/speckle_share.py`` (one anatomy under two speckle seeds, 1 - median correlation of
corresponding patches' targets, patches wholly inside the scan) applied to the targets ``objectives.pixel_targets``
gives for each kind: MAE's normalised pixels, low-passed pixels at several Gaussian widths (normalised per patch
too, so only the shape within the patch counts), and HOG. A target that averages the speckle away has a share near
0; one that is mostly speckle near 1. Prints a markdown table (docs/teachers.md quotes it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere in the repo

_SIZE = flags.DEFINE_integer("size", 112, "Input size in pixels (rendered at this size).")
_PATCH = flags.DEFINE_integer("patch", 8, "Patch size of the model.")
_ANATOMIES = flags.DEFINE_integer("anatomies", 32, "Anatomies per seed.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Samples of anatomies (the measure's seed).")
_SIGMAS = flags.DEFINE_list("sigmas", ["1", "2", "3"], "Low-pass Gaussian standard deviations, in input pixels.")


def target_shares(size: int, patch: int, anatomies: int, seed: int, sigmas: list[float]) -> dict[str, float]:
    """``{target: speckle share}`` on one sample of ``anatomies`` rendered at ``size``."""
    import jax.numpy as jnp

    from usjepa_jax import objectives
    from usjepa_jax.data import speckle_share

    a, b, masks = speckle_share.speckle_pairs(size, size, anatomies, seed)
    keep = speckle_share.patches_inside_scan(masks, patch)
    kinds = {"pixels": ("pixels", {}), **{f"lowpass sigma={s:g}": ("lowpass", {"lowpass_sigma": s}) for s in sigmas},
             "hog": ("hog", {})}
    out = {}
    for name, (kind, kwargs) in kinds.items():
        ta, tb = (np.asarray(objectives.pixel_targets(jnp.asarray(x[..., None], jnp.float32), patch, kind=kind,
                                                      **kwargs)) for x in (a, b))
        out[name] = float(1.0 - np.median(speckle_share.target_correlations(ta, tb, keep)))
    return out


def main(argv) -> None:
    del argv
    seeds, sigmas = [int(s) for s in _SEEDS.value], [float(s) for s in _SIGMAS.value]
    rows = [target_shares(_SIZE.value, _PATCH.value, _ANATOMIES.value, seed, sigmas) for seed in seeds]
    print(f"| target ({_SIZE.value} px / patch {_PATCH.value}, {_ANATOMIES.value} anatomies) | "
          + " / ".join(f"seed {s}" for s in seeds) + " |\n|---|---|")
    for name in rows[0]:
        print(f"| {name} | " + " / ".join(f"{r[name]:.3f}" for r in rows) + " |")


if __name__ == "__main__":
    app.run(main)
