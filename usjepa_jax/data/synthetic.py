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

import sys

from absl import flags

from usjepa_jax.data.seeding import derive_seed
from usjepa_jax.data.simulator.config import (CLASS_NAMES, GEOMETRIES, GRADES, LESION_SEGMENT, MARGINS, ORGANS, PROBES,
                                              SEG, SEGMENTATION_NAMES, SOLID_LESIONS, TASK_CLASSES, Probe,
                                              SimulatorConfig)
from usjepa_jax.data.simulator.inspection import cnr_table, contact_sheet, lesion_cnr, write_sample
from usjepa_jax.data.simulator.prerender import prerender
from usjepa_jax.data.simulator.render import bmode_homogeneous, psf_fwhm_mm, render, render_homogeneous
from usjepa_jax.data.simulator.scenes import sample_anatomy
from usjepa_jax.data.simulator.source import SyntheticUltrasoundSource
from usjepa_jax.data.speckle_share import print_share_table

__all__ = ["CLASS_NAMES", "GEOMETRIES", "GRADES", "LESION_SEGMENT", "MARGINS", "ORGANS", "PROBES", "SEG",
           "SEGMENTATION_NAMES", "SOLID_LESIONS", "TASK_CLASSES", "Probe", "SimulatorConfig",
           "SyntheticUltrasoundSource", "bmode_homogeneous", "cnr_table", "contact_sheet", "derive_seed", "lesion_cnr",
           "main", "prerender", "psf_fwhm_mm", "render", "render_homogeneous", "sample_anatomy", "write_sample"]


PROG = "python -m usjepa_jax.data.synthetic"
ACTIONS = ("out", "contact-sheet", "cnr-table", "arrayrecord", "speckle-share")


def flag_values() -> flags.FlagValues:
    """The command's flags, in their own ``FlagValues``: the command parses only these, and importing this module
    next to ``main``'s or ``evaluate``'s flags defines nothing twice."""
    fv = flags.FlagValues()
    flags.DEFINE_string("out", None, "output directory (PNG sample)", flag_values=fv)
    flags.DEFINE_integer("num", 100, "number of images", flag_values=fv)
    flags.DEFINE_integer("size", 224, "output size in pixels", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "seed of the images", flag_values=fv)
    flags.DEFINE_string("contact-sheet", None, "also write a contact-sheet PNG here", flag_values=fv)
    flags.DEFINE_bool("cnr-table", False, "print the median lesion CNR by class and size", flag_values=fv)
    flags.DEFINE_string("sizes", "64,96,224", "output sizes of the CNR table", flag_values=fv)
    flags.DEFINE_string("arrayrecord", None, "pre-render --num images of --size into this directory in the prepared "
                        "ArrayRecord format (train with config.data.source='prepared')", flag_values=fv)
    flags.DEFINE_string("speckle-share", None, "SIZE/PATCH,...: print the speckle share of the pixel targets at these "
                        "input sizes and patch sizes (data/speckle_share.py)", flag_values=fv)
    flags.DEFINE_integer("anatomies", 32, "anatomies of the speckle share", flag_values=fv)
    return fv


def parse(argv: list[str]) -> flags.FlagValues:
    """The flags of ``argv`` (without the program name); a bad flag or nothing to do exits with the usage."""
    fv = flag_values()
    if "--help" in argv or "-h" in argv:
        print(f"usage: {PROG} [flags]\n\n{fv.get_help()}")
        sys.exit(0)
    try:
        fv([PROG, *argv])
    except flags.Error as exc:
        sys.exit(f"{PROG}: error: {exc}\n\n{fv.get_help()}")
    if not any(fv[name].value for name in ACTIONS):
        sys.exit(f"{PROG}: error: nothing to do: give --out, --contact-sheet, --cnr-table, --arrayrecord or "
                 "--speckle-share")
    return fv


def main(argv: list[str] | None = None) -> None:
    a = parse(sys.argv[1:] if argv is None else list(argv))
    num, size, seed = a["num"].value, a["size"].value, a["seed"].value
    if a["arrayrecord"].value:
        summary = prerender(a["arrayrecord"].value, num, SimulatorConfig(image_size=size), seed)
        print(f"pre-rendered {summary['images']} images into {summary['shards']} shards in {summary['out']} "
              f"({summary['seconds']}s)")
    if a["out"].value:
        summary = write_sample(a["out"].value, num, size, seed)
        print(f"wrote {summary['num']} images of {summary['size']}x{summary['size']} to {summary['out']} in "
              f"{summary['seconds']}s; classes {summary['classes']}")
    if a["contact-sheet"].value:
        contact_sheet(a["contact-sheet"].value, min(num, 24), seed, size)
        print(f"wrote {a['contact-sheet'].value}")
    if a["cnr-table"].value:
        sizes = tuple(int(s) for s in a["sizes"].value.split(","))
        table = cnr_table(sizes, num, seed)
        names = CLASS_NAMES[1:]
        print("| size | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for size, row in table.items():
            print(f"| {size} | " + " | ".join(f"{row[n]:.2f}" for n in names) + " |")
    if a["speckle-share"].value:
        print_share_table(a["speckle-share"].value, a["anatomies"].value, seed)


if __name__ == "__main__":
    main()
