"""US-JEPA (USrc masking) on real ultrasound prepared by `python -m usjepa_jax.data.prepare`, CPU-sized like
configs/base.py (112 x 112 input, patch 8, a 4-layer Ti encoder; SALT stage 1 teacher first).

Run:
    python -m usjepa_jax.data.prepare --input /data/busi_v1 --input /data/dicoms --output /data/prepared --size 112
    python -m usjepa_jax.main --config=configs/folder.py:/data/prepared --workdir=/tmp/usjepa_folder
Several prepared directories: ``--config=configs/folder.py:/data/a,/data/b`` (or
``--config.data.paths="['/data/a','/data/b']"``). Variants ``smoke`` and ``runlocal``
(``configs/folder.py:/data/prepared,smoke``) as in every config (usjepa_jax/config.py apply_variants).

Prepare at the training size (``--size 112`` here, ``data.image_size``) so that no resize is left for training.
Datasets are balanced with the per-dataset cap N_t (``data.cap_per_dataset``, 50,000) and 5% of the files are
held out for the validation loss and the best-encoder export (``data.val_fraction``; at most ``data.num_val``
frames of them).
USrc: ``masks.min_valid_in_target`` = 3 (tau), chosen when the base grid was 8 x 8, where a target block of
scale 0.075-0.125 holds 5-8 patches; on today's 14 x 14 grid a block holds 15-25 patches, as at paper scale,
where configs/usrc_vitb16.py asks 10.
"""

from usjepa_jax import config as config_lib

base = config_lib.sibling_config(__file__, "base")


def get_config(arg: str | None = None):
    variants, paths = config_lib.parse_arg(arg, __file__, positional=True)  # the other words: data directories
    c = base.get_config(",".join(sorted(variants)))
    c.data.source = "prepared"
    c.data.paths = paths
    c.data.cap_per_dataset = 50_000
    c.data.mixture_epochs = 10
    c.data.val_fraction = 0.05
    c.data.num_val = 512
    c.masks.min_valid_in_target = 1 if "smoke" in variants else 3
    return c
