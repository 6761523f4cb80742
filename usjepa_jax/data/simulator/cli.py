"""The simulator's command line (``python -m usjepa_jax.data.synthetic``): a PNG sample, a contact sheet, the
lesion CNR table, the speckle share of the pixel targets, or a pre-render into prepared shards.

Its flags live in their own ``absl.flags.FlagValues``, so the command parses only its own flags and importing it
next to ``main``'s or ``evaluate``'s flags defines nothing twice.
"""

from __future__ import annotations

import sys

from absl import flags

from usjepa_jax.data.simulator.config import CLASS_NAMES, SimulatorConfig
from usjepa_jax.data.simulator.inspection import cnr_table, contact_sheet, write_sample
from usjepa_jax.data.simulator.prerender import prerender

PROG = "python -m usjepa_jax.data.synthetic"
ACTIONS = ("out", "contact-sheet", "cnr-table", "arrayrecord", "speckle-share")


def flag_values() -> flags.FlagValues:
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
        from usjepa_jax.data.speckle_share import print_share_table  # it imports the simulator

        print_share_table(a["speckle-share"].value, a["anatomies"].value, seed)
