"""The paper's setting: ViT-B/16 student at 224, predictor depth 12 / width 384, AdamW batch 128, 100 epochs
with 10 warm-up, lr 5e-6 -> 5e-5 -> 5e-7, wd 0.04 -> 0.4, frozen ViT-B/16 teacher. For accelerators.

Run (frozen teacher you bring, e.g. URFM converted by `python -m usjepa_jax.encoders convert`):
    python -m usjepa_jax.main --config=configs/paper_vitb16.py --workdir=gs://BUCKET/usjepa_b16 \
        --config.teacher.checkpoint=/path/to/urfm_converted
Without a teacher checkpoint, SALT stage 1 first trains a ViT-B/16 pixel teacher (same schedule).
Check on a CPU before launching (the same models and masks, 4 steps of 8 images; seconds to minutes):
    python -m usjepa_jax.main --config=configs/paper_vitb16.py:runlocal --workdir=/tmp/b16_runlocal

Epochs are converted to steps at `data.num_train` images per epoch (the paper's ~5.1M frames). Mixed precision
(bfloat16 compute, float32 parameters) is on. The paper's augmentations (random resized crop [0.6, 1],
flips, blur, speckle, contrast) are on here; the default configs are augmentation-free.
"""

from usjepa_jax import config as config_lib

EPOCHS, WARMUP_EPOCHS, BATCH = 100, 10, 128


def get_config(arg: str | None = None):
    variants, _ = config_lib.parse_arg(arg, __file__)
    c = config_lib.default_config()
    c.method = "usjepa"
    c.expect_accelerator = True
    c.data.image_size = 224
    c.data.num_train = 5_100_000
    c.data.augment.enabled = True
    steps_per_epoch = c.data.num_train // BATCH
    for model, optim in ((c.model, c.optim), (c.teacher.model, c.teacher.optim)):
        model.variant = "B/16"
        model.dtype = "bfloat16"
        optim.batch_size = BATCH
        optim.total_steps = EPOCHS * steps_per_epoch
        optim.warmup_steps = WARMUP_EPOCHS * steps_per_epoch
    c.predictor = config_lib.predictor_config(width=384, depth=12, num_heads=12)
    c.log_every = 100
    c.checkpoint.every = 5000
    c.checkpoint.keep_period = 50_000
    return config_lib.apply_variants(c, variants)
