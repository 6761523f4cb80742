"""US-JEPA on the built-in synthetic ultrasound, small enough for a laptop CPU (run times: docs/regime.md).

Run:    python -m usjepa_jax.main --config=configs/base.py --workdir=/tmp/usjepa_base
Smoke:  python -m usjepa_jax.main --config=configs/base.py:smoke --workdir=/tmp/usjepa_smoke   (seconds;
        every config takes :smoke and :runlocal, usjepa_jax/config.py apply_variants)

Stage 1 trains a reconstruction teacher (SALT's stage 1) into <workdir>/teacher, stage 2 the student against it,
frozen. Its targets are MaskFeat's histograms of oriented gradients rather than SALT's pixels: at this budget the
pixel teacher is below a random init on every probe and its student follows it, while the HOG teacher is clearly
above the pixel teacher over 3 pretraining seeds (docs/regime.md, "Teacher options");
``--config.teacher.pixel_target=pixels`` is SALT's own.

The input is in the paper's regime at a CPU's scale: 112 px with patch 8 (a 14 x 14 grid, the paper's
196 tokens), where speckle is about half of the variance of the per-patch pixel targets, as at the paper's
224 / 16 (``python -m usjepa_jax.data.synthetic --speckle-share 112/8``; docs/regime.md). A quarter of the
pretraining images are views framed on a lesion site, as clinical archives hold next to survey scans
(data/framing.py). Reduced against the paper: a 4-layer Ti-width encoder, a 2-layer predictor, 150 + 300 steps
of batch 64. Measured times and probe scores over pretraining seeds: docs/regime.md.

Stage-2 targets are layer-normed (I-JEPA) and then standardised per feature over the batch
(``loss.standardize_targets``, objectives.standardize_features; not in the papers): a short stage-1 teacher's
tokens share one direction with nearly all of their layer-normed energy, and without the standardisation the
student's loss falls to almost nothing within a hundred steps and its probe stays at the random init's.
"""

from usjepa_jax import config as config_lib


def get_config(arg: str | None = None):
    variants, _ = config_lib.parse_arg(arg, __file__)
    c = config_lib.default_config()
    c.method = "usjepa"

    c.data.image_size = 112
    c.data.num_train = 20_000
    c.data.num_val = 512
    c.data.synthetic.image_size = 112  # render at the model's resolution: the speckle's grain as acquired
    c.data.framing.fraction = 0.25  # framed views in the pretraining mixture (the rest whole scans)
    c.loss.standardize_targets = True  # see the module docstring: the short teacher's tokens share one direction

    c.model = config_lib.model_config("Ti/8")
    c.model.depth = 4
    c.predictor = config_lib.predictor_config(width=96, depth=2, num_heads=4)
    c.optim.batch_size = 64
    # 32 sequential micro-batches of 2 images: the same loss and gradient as the whole batch (train.py,
    # make_loss_and_grads), but a micro-batch's activations stay in the CPU's cache; at 112 px the fastest of
    # 4 / 8 / 16 / 32 / 64 on 2 cores (docs/performance.md). On accelerators set 1.
    c.optim.grad_accum_steps = 32
    # Each micro-batch at its own context length (rows sorted by context size, 6 lengths 8 patches apart): the
    # same loss and gradient, about a fifth fewer context slots: most of the padding (docs/performance.md).
    c.optim.micro_pad_buckets = 6
    c.optim.total_steps = 300
    c.optim.warmup_steps = 30
    c.optim.lr_start, c.optim.lr_peak, c.optim.lr_end = 1e-4, 1e-3, 1e-5

    c.teacher.model = config_lib.model_config("Ti/8")
    c.teacher.model.depth = 4
    c.teacher.decoder = config_lib.predictor_config(width=96, depth=2, num_heads=4)
    # HOG targets for the short stage 1 (docs/regime.md, "Teacher options"). With pixel targets: raw pixels, since
    # per-patch normalised ones are mostly speckle at this scale and the teacher's output collapsed to a constant
    # direction, which made stage 2 trivial (docs/reference_runs_64px.md).
    c.teacher.pixel_target = "hog"
    c.teacher.normalize_pixels = False
    c.teacher.optim = c.optim.copy_and_resolve_references()
    c.teacher.optim.total_steps = 150
    c.teacher.optim.warmup_steps = 15

    # The paper's linear probe on mean-pooled tokens, and the two readouts of the patch tokens (docs/probes.md),
    # on the framed `lesion` task and whole-scan `organ`; smaller splits than the default keep evaluation in
    # minutes at 112 px.
    c.evals.evaluators = "collapse,knn,linear_probe,attentive_probe,dense_probe,speckle_invariance"
    c.evals.num_train, c.evals.num_val, c.evals.num_test = 1000, 250, 500

    c.log_every = 20
    c.eval_every = 100
    c.evals.knn.every = 100  # k-NN monitor during pretraining (labelled simulator images, evaluation/monitor.py)
    c.checkpoint.every = 200
    return config_lib.apply_variants(c, variants)
