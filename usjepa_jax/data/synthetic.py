"""Built-in synthetic ultrasound: the public face of the B-mode simulator in ``data/simulator/``, and its command.

``render(anatomy_seed, speckle_seed, config)`` draws one image (``SimulatorConfig``: the ranges its parameters
are drawn from); ``SyntheticUltrasoundSource`` serves them to the pipeline; ``prerender`` writes them into
prepared shards. The physics, the scenes and the returned keys: ``docs/simulator.md``.

    python -m usjepa_jax.data.synthetic --out DIR --num N [--size 224] [--seed S] [--contact-sheet PNG]
    python -m usjepa_jax.data.synthetic --cnr-table --sizes 64,96,224      # median lesion CNR by class and size
    python -m usjepa_jax.data.synthetic --speckle-share 64/8,112/8          # speckle share of the pixel targets
    python -m usjepa_jax.data.synthetic --arrayrecord DIR --num N --size S  # pre-render into prepared shards
"""

from __future__ import annotations

from usjepa_jax.data.seeding import derive_seed
from usjepa_jax.data.simulator.cli import main
from usjepa_jax.data.simulator.config import (CLASS_NAMES, GEOMETRIES, GRADES, LESION_SEGMENT, MARGINS, ORGANS, PROBES,
                                              SEG, SEGMENTATION_NAMES, SOLID_LESIONS, TASK_CLASSES, Probe,
                                              SimulatorConfig)
from usjepa_jax.data.simulator.inspection import cnr_table, contact_sheet, lesion_cnr, write_sample
from usjepa_jax.data.simulator.prerender import prerender
from usjepa_jax.data.simulator.render import bmode_homogeneous, psf_fwhm_mm, render, render_homogeneous
from usjepa_jax.data.simulator.scenes import sample_anatomy
from usjepa_jax.data.simulator.source import SyntheticUltrasoundSource

__all__ = ["CLASS_NAMES", "GEOMETRIES", "GRADES", "LESION_SEGMENT", "MARGINS", "ORGANS", "PROBES", "SEG",
           "SEGMENTATION_NAMES", "SOLID_LESIONS", "TASK_CLASSES", "Probe", "SimulatorConfig",
           "SyntheticUltrasoundSource", "bmode_homogeneous", "cnr_table", "contact_sheet", "derive_seed", "lesion_cnr", "main", "prerender",
           "psf_fwhm_mm", "render", "render_homogeneous", "sample_anatomy", "write_sample"]

if __name__ == "__main__":
    main()
