"""The config schema: defaults for every key, and validation that fails before any compute.

Experiment files in ``configs/`` start from ``default_config()`` and change what they need. ``validate`` checks
values (method names, variants, divisibility of image and patch sizes, schedules...) and names the offending key;
unknown keys are already refused by ``ConfigDict`` itself (CLI overrides of a missing key, or reading one).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import ml_collections

from usjepa_jax import layout, objectives, targets
from usjepa_jax.data import framing
from usjepa_jax.data.settings import default_data_config
from usjepa_jax.evaluation.config import TASK_NAMES, default_eval_config, validate_eval_config
from usjepa_jax.masks import default_mask_config
from usjepa_jax.models import vit

DTYPES = ("float32", "bfloat16")


def sibling_config(config_file: str, name: str) -> ModuleType:
    """The config module ``name`` next to ``config_file`` (``configs/folder.py`` builds on ``base.py``).

    Loaded by path, so a config works wherever it lies and however it was loaded: ``--config=configs/x.py`` from
    the checkout, an absolute path from any directory, or the installed ``usjepa_jax.configs`` package.
    """
    path = Path(config_file).resolve().with_name(f"{name}.py")
    module_name = f"_usjepa_config_{name}_{abs(hash(str(path)))}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or not path.is_file():
            raise FileNotFoundError(f"{config_file} builds on {path}, which does not exist.")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[module_name] = module
    return sys.modules[module_name]


VARIANTS = ("smoke", "runlocal")  # every config takes these after a colon: configs/x.py:smoke


def parse_arg(arg: str | None, config_file: str, extra: tuple[str, ...] = (), positional: bool = False
              ) -> tuple[set[str], list[str]]:
    """A config's ``arg`` (``configs/x.py:ARG``, comma-separated) -> (variant names, the other words).

    The variants are ``VARIANTS`` plus the config's own ``extra`` ones; other words are an error naming the config
    file unless the config takes ``positional`` words (``configs/folder.py:/data/a,/data/b,smoke``)."""
    words = [w for w in (arg or "").split(",") if w]
    known = (*VARIANTS, *extra)
    rest = [w for w in words if w not in known]
    if rest and not positional:
        raise ValueError(f"Unknown config variant {rest[0]!r} in {Path(config_file).name} (known: "
                         f"{', '.join(known)}).")
    return {w for w in words if w in known}, rest


def apply_variants(c: ml_collections.ConfigDict, variants: set[str]) -> ml_collections.ConfigDict:
    """``smoke``: everything tiny (a mu/8 model at 48 px, 4 steps of 8 images): seconds on a CPU, what tests run.
    ``runlocal``: the config's own models and masks, but a run that fits a laptop (8 images a step, 4 steps,
    float32, no accelerator expected): a CPU check of an accelerator config before it is launched."""
    from usjepa_jax.evaluation.config import shrink_for_smoke

    if "smoke" in variants:
        c.data.image_size = 48
        c.data.synthetic.image_size = 64
        c.data.framing.render_size = 128  # framed views of a 64 px render need no more
        for m in (c.model, c.teacher.model):
            m.variant, m.depth = "mu/8", None
        c.predictor = predictor_config(width=32, depth=1, num_heads=2)
        c.teacher.decoder = predictor_config(width=32, depth=1, num_heads=2)
        c.masks.min_keep = 1
        c.masks.target_scale = (0.15, 0.2)
        c.evals.knn.every = 4
    if variants & {"smoke", "runlocal"}:
        c.expect_accelerator = False
        c.data.num_train, c.data.num_val = 64, 16
        c.data.worker_count = 0
        for m in (c.model, c.teacher.model):
            m.dtype = "float32"
        for o in (c.optim, c.teacher.optim):
            o.batch_size, o.total_steps, o.warmup_steps = 8, 4, 1
            o.grad_accum_steps = 1  # 8 images a step, sharded over up to 8 devices
        c.log_every = 2
        c.checkpoint.every = 2
        c.checkpoint.keep_period = 0
        shrink_for_smoke(c.evals)
    return c


def model_config(variant: str = "B/16") -> ml_collections.ConfigDict:
    """An encoder: a variant of the table (``'B/16'``), optional size overrides (None = from the variant)."""
    return ml_collections.ConfigDict(dict(
        variant=variant,
        width=ml_collections.FieldReference(None, field_type=int),
        depth=ml_collections.FieldReference(None, field_type=int),
        mlp_dim=ml_collections.FieldReference(None, field_type=int),
        num_heads=ml_collections.FieldReference(None, field_type=int),
        posemb="sincos2d",  # fixed 2-D sin-cos (I-JEPA) or "learn"
        remat=False,  # activation rematerialisation of each block (trades compute for memory)
        remat_policy="",  # with remat: what a block keeps, models/vit.py REMAT_POLICIES ("" = nothing)
        dtype="float32",  # compute dtype; parameters are always float32 (bfloat16: the accelerator setting)
        # attention implementation, models/vit.py attention(): auto (einsum on CPU, jax.nn.dot_product_attention
        # elsewhere, cuDNN's fused kernel where it applies), einsum, xla, cudnn. The model is the same for all.
        attention="auto",
    ))


def predictor_config(width: int = 384, depth: int = 12, num_heads: int = 12) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(width=width, depth=depth, num_heads=num_heads, mlp_ratio=4))


def optim_config() -> ml_collections.ConfigDict:
    """AdamW; lr linear warm-up ``lr_start -> lr_peak`` then cosine to ``lr_end``; wd cosine ``wd_start -> wd_end``.

    Paper values (batch 128, 100 epochs, 10 warm-up): 5e-6 -> 5e-5 -> 5e-7, wd 0.04 -> 0.4.
    """
    return ml_collections.ConfigDict(dict(
        batch_size=128,  # global batch over all processes and devices
        total_steps=100_000,
        warmup_steps=10_000,
        lr_start=5e-6, lr_peak=5e-5, lr_end=5e-7,
        wd_start=0.04, wd_end=0.4,
        b1=0.9, b2=0.999,
        grad_clip=ml_collections.FieldReference(None, field_type=float),  # global-norm clip, None = off
        grad_accum_steps=1,  # sequential micro-batches per global batch; same loss and gradient (memory; CPU speed)
    ))


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Sized for GPUs/TPUs (the paper-scale configs): main then warns loudly when jax finds only a CPU, which is
    # what a CPU-only jax install gives on an accelerator machine (README, "Set up and run").
    c.expect_accelerator = False
    # usjepa: latent prediction against a frozen teacher (stage 1 trains one here when none is given);
    # ijepa: the EMA-teacher baseline; pixel: masked pixel reconstruction (MAE-style baseline / SALT stage 1).
    c.method = "usjepa"
    c.model = model_config("B/16")
    c.predictor = predictor_config()
    c.masks = default_mask_config()
    c.data = default_data_config()
    c.loss = ml_collections.ConfigDict(dict(
        kind="smooth_l1",  # latent loss: smooth_l1 (beta 1) | l1 (SALT stage 2) | l2
        normalize_targets=True,  # layer-norm teacher targets over features (I-JEPA); US-JEPA is silent
        # then each feature standardised over the batch's target patches (objectives.standardize_features): for
        # briefly trained teachers whose tokens share one dominant direction (configs/base.py); not in the papers
        standardize_targets=False,
        normalize_pixels=True,  # pixel method: per-patch normalised targets (MAE)
    ))
    c.optim = optim_config()
    c.ema = ml_collections.ConfigDict(dict(start=0.996, end=1.0))  # ijepa only: momentum, linear over training
    c.teacher = ml_collections.ConfigDict(dict(
        # Path of a frozen teacher: an exported encoder directory (``<run>/encoder``). Empty: stage 1 trains a
        # pixel-reconstruction teacher into ``<workdir>/teacher`` first (reused when already there).
        checkpoint="",
        # Directory of precomputed teacher targets (``python -m usjepa_jax.encoders cache``, encoders/cache.py):
        # the teacher then never runs (nor is loaded); augmentation must be off and the data config must match.
        cache="",
        # Stage 1 (SALT): the teacher's encoder, its light pixel decoder and its own optimisation.
        model=model_config("B/16"),
        decoder=predictor_config(width=384, depth=4, num_heads=12),
        optim=optim_config(),
        # Stage-1 pixel targets per-patch normalised (MAE). On small, briefly trained teachers the normalised
        # target is mostly speckle, which cannot be predicted, and the encoder's output can collapse to a
        # constant: raw pixels (False) keep the predictable anatomy (patch brightness) in the target.
        normalize_pixels=True,
    ))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))  # -1: all remaining devices
    c.sharding = ml_collections.ConfigDict(dict(strategy="replicate"))  # replicate (data parallel) | fsdp
    c.log_every = 50
    c.profile_steps = 0  # > 0: a jax.profiler trace of the first N steps of this run in <workdir>/profile
    c.eval_every = 1000  # validation loss on data.num_val held-out images; the best encoder -> encoder_best/
    c.checkpoint = ml_collections.ConfigDict(dict(every=1000, max_to_keep=3, keep_period=0, async_save=True))
    c.evals = default_eval_config()  # frozen-encoder evaluation (python -m usjepa_jax.evaluate, evaluation/)
    return c


def encoder_kwargs(model_cfg: ml_collections.ConfigDict) -> dict:
    """Keyword arguments of ``VisionTransformer`` from a model config (variant + non-None overrides)."""
    kwargs = vit.parse_variant(model_cfg.variant)
    for key in ("width", "depth", "mlp_dim", "num_heads"):
        if model_cfg[key] is not None:
            kwargs[key] = model_cfg[key]
    kwargs.update(posemb=model_cfg.posemb, remat=model_cfg.remat, remat_policy=model_cfg.remat_policy,
                  attention=model_cfg.attention)
    return kwargs


def _check(condition: bool, key: str, value, expected: str) -> None:
    if not condition:
        raise ValueError(f"config.{key}={value!r} is invalid: {expected}.")


def _validate_model(prefix: str, model_cfg: ml_collections.ConfigDict, image_size: int) -> None:
    try:
        kwargs = encoder_kwargs(model_cfg)
    except ValueError as e:
        raise ValueError(f"config.{prefix}.variant: {e}") from None
    _check(model_cfg.posemb in ("sincos2d", "learn"), f"{prefix}.posemb", model_cfg.posemb, "sincos2d or learn")
    _check(model_cfg.dtype in DTYPES, f"{prefix}.dtype", model_cfg.dtype, f"one of {DTYPES}")
    _check(model_cfg.attention in vit.ATTENTION_IMPLS, f"{prefix}.attention", model_cfg.attention,
           f"one of {vit.ATTENTION_IMPLS}")
    _check(model_cfg.remat_policy in vit.REMAT_POLICIES, f"{prefix}.remat_policy", model_cfg.remat_policy,
           f"one of {vit.REMAT_POLICIES}")
    _check(kwargs["width"] % kwargs["num_heads"] == 0, f"{prefix}.width", kwargs["width"],
           f"divisible by num_heads={kwargs['num_heads']}")
    _check(image_size % kwargs["patch_size"] == 0, "data.image_size", image_size,
           f"divisible by the patch size {kwargs['patch_size']} of {prefix}.variant={model_cfg.variant!r}")


def _validate_optim(prefix: str, o: ml_collections.ConfigDict) -> None:
    _check(o.batch_size >= 1, f"{prefix}.batch_size", o.batch_size, "at least 1")
    _check(o.total_steps >= 1, f"{prefix}.total_steps", o.total_steps, "at least 1")
    _check(0 <= o.warmup_steps <= o.total_steps, f"{prefix}.warmup_steps", o.warmup_steps,
           f"between 0 and total_steps={o.total_steps}")
    for key in ("lr_start", "lr_peak", "lr_end", "wd_start", "wd_end"):
        _check(o[key] >= 0, f"{prefix}.{key}", o[key], "non-negative")
    _check(o.grad_clip is None or o.grad_clip > 0, f"{prefix}.grad_clip", o.grad_clip, "None or positive")
    _check(o.grad_accum_steps >= 1 and o.batch_size % o.grad_accum_steps == 0, f"{prefix}.grad_accum_steps",
           o.grad_accum_steps, f"at least 1 and a divisor of batch_size={o.batch_size}")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming the key for any invalid value. Cheap: runs before any device work."""
    _check(config.method in targets.METHODS, "method", config.method, f"one of {tuple(targets.METHODS)}")
    _check(config.loss.kind in objectives.LOSS_KINDS, "loss.kind", config.loss.kind,
           f"one of {objectives.LOSS_KINDS}")
    _validate_model("model", config.model, config.data.image_size)
    _validate_optim("optim", config.optim)
    _check(config.sharding.strategy in ("replicate", "fsdp"), "sharding.strategy", config.sharding.strategy,
           "replicate or fsdp")
    _check(config.log_every >= 1, "log_every", config.log_every, "at least 1")
    _check(config.profile_steps >= 0, "profile_steps", config.profile_steps, "0 (off) or a number of steps")
    _check(config.eval_every >= 0, "eval_every", config.eval_every, "0 (off) or a number of steps")
    _check(config.checkpoint.every >= 1, "checkpoint.every", config.checkpoint.every, "at least 1")
    _check(0 <= config.ema.start <= config.ema.end <= 1, "ema", dict(config.ema), "0 <= start <= end <= 1")
    if "evals" in config:
        validate_eval_config(config.evals)
    framing.validate(config.data, TASK_NAMES)
    if config.teacher.cache:
        _check(config.method == "usjepa", "teacher.cache", config.teacher.cache,
               "empty unless method='usjepa' (only a frozen teacher's targets can be precomputed)")
        _check(not config.data.augment.enabled, "data.augment.enabled", config.data.augment.enabled,
               "False with teacher.cache: the augmentations (random resized crop, flips, blur, speckle, contrast) "
               "change the images on the fly, but the cached targets are the teacher's embeddings of the "
               "un-augmented images; turn augmentation off or drop teacher.cache")
    if config.method == "usjepa" and not config.teacher.checkpoint and not config.teacher.cache:
        _validate_model("teacher.model", config.teacher.model, config.data.image_size)
        _validate_optim("teacher.optim", config.teacher.optim)
        _check(vit.parse_variant(config.teacher.model.variant)["patch_size"]
               == vit.parse_variant(config.model.variant)["patch_size"], "teacher.model.variant",
               config.teacher.model.variant, "the same patch size as model.variant (targets are per patch)")


def stage1_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The SALT stage-1 run derived from a US-JEPA config: pixel reconstruction with the teacher's encoder,
    decoder and optimisation, the same data, masks, mesh and checkpointing."""
    stage1 = ml_collections.ConfigDict(config.to_dict())
    stage1.method = "pixel"
    stage1.model = config.teacher.model
    stage1.predictor = config.teacher.decoder
    stage1.optim = config.teacher.optim
    stage1.loss.normalize_pixels = config.teacher.normalize_pixels
    return stage1


def run_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The resolved config a training run saved (``WORKDIR/config.json``); tuples come back as lists."""
    path = Path(workdir) / layout.CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (not a training run, or one older than config.json): "
                                "pass --config=configs/NAME.py as it was trained.")
    return ml_collections.ConfigDict(json.loads(path.read_text()))
