"""USrc-JEPA at paper scale: configs/paper_vitb16.py (ViT-B/16 at 224, predictor 12 x 384, AdamW batch 128,
100 epochs) with scan-region-constrained masking, trained on prepared real data.

Run (prepare the data once, then train; teacher as in configs/paper_vitb16.py):
    python -m usjepa_jax.data.prepare --input /data/ds1 --input /data/ds2 --output /data/prepared --size 224
    python -m usjepa_jax.main --config=configs/usrc_vitb16.py --workdir=gs://BUCKET/usrc_b16 \
        --config.data.paths="['/data/prepared']" --config.teacher.checkpoint=/path/to/urfm_converted
Variant ``:synthetic`` keeps the built-in simulator (its scan masks are exact) instead of prepared data;
``:smoke`` and ``:runlocal`` as in every config (``:synthetic,runlocal`` runs on a CPU without data).

USrc (docs/method.md): a patch is valid when it touches the scan region (the per-frame ``scan_mask``: UltraBench
``masks/scan``, or the detected fan/rectangle, carried through prepare.py into every batch); each target block is
redrawn until it holds at least tau valid patches; targets, context and the loss use valid patches only.

tau = ``masks.min_valid_in_target`` = 10. The paper does not give tau. A target block of scale [0.075, 0.125] on
the 14 x 14 grid holds 15-25 patches, and the sampler already asks ``min_keep`` = 10 patches of every block, so
tau = 10 asks the same of the *valid* patches: every target keeps at least as many patches as I-JEPA's rule
guarantees, while blocks on the fan's edge stay allowed (tau = 15+ would push targets to the fan's centre and
fails for blocks of the smallest size). On sector images the scan region covers ~55-70% of the frame, where a
uniformly placed block passes with probability ~0.6, so rejection sampling costs a few draws per block.

Dataset balancing: the paper's cap N_t = 50,000 frames per dataset per epoch (``data.cap_per_dataset``) with
``data.mixture_epochs`` = 100 (every epoch sees a fresh capped subset of a large dataset); ``data.num_train``
must be set to the mixture's epoch size (sum over datasets of min(|D_i|, N_t)) for epochs -> steps; it is left
at the paper's 5.1M when unknown.
"""

from usjepa_jax import config as config_lib

paper_vitb16 = config_lib.sibling_config(__file__, "paper_vitb16")


def get_config(arg: str | None = None):
    variants, _ = config_lib.parse_arg(arg, __file__, extra=("synthetic",))
    c = paper_vitb16.get_config(None)
    c.method = "usjepa"
    c.masks.min_valid_in_target = 10  # tau (see the module docstring)
    c.data.source = "synthetic" if "synthetic" in variants else "prepared"
    c.data.cap_per_dataset = 50_000
    c.data.mixture_epochs = 100
    c.data.val_fraction = 0.05
    c.data.worker_count = 8
    c = config_lib.apply_variants(c, variants)
    if "smoke" in variants:
        c.masks.min_valid_in_target = 1  # the smoke grid's target blocks hold 5-7 patches
    return c
