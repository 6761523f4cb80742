"""The config schema: defaults for every key, and validation that fails before any compute.

Experiment files in ``configs/`` start from ``default_config()`` and change what they need. ``validate`` checks
values (method names, variants, divisibility of image and patch sizes, schedules...) and names the offending key;
unknown keys are already refused by ``ConfigDict`` itself (CLI overrides of a missing key, or reading one).

This module is the ground floor of the package: it imports no jax (nor flax, optax), so a config loads and
validates before anything heavy is imported, and every other module may import it. What the schema needs of the
model (the ViT variant table, the attention and remat names) and of the loss (``LOSS_KINDS``, ``PIXEL_TARGETS``) is defined here for
that reason; ``models/vit.py`` and ``objectives.py`` take it from here.

Methods (``config.method``) register themselves (``register_method``): each owns its config keys (added to
``default_config()``), their checks (run only when that method is chosen) and the run it needs first
(``stage1_config``). The built-in ones are at the end of this module; a new one registers from its own module
(docs/adding_a_method.md), so adding a method does not touch this file.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import ml_collections

from usjepa_jax import layout
from usjepa_jax.data import framing
from usjepa_jax.data.settings import default_data_config
from usjepa_jax.evaluation.config import TASK_NAMES, default_eval_config, shrink_for_smoke, validate_eval_config
from usjepa_jax.masks import default_mask_config

DTYPES = ("float32", "bfloat16")
LOSS_KINDS = ("smooth_l1", "l1", "l2")  # objectives.elementwise_loss
STAGE1_KINDS = ("reconstruction", "ijepa")  # teacher.stage1: what stage 1 trains when no teacher is given
PIXEL_TARGETS = ("pixels", "lowpass", "hog")  # objectives.pixel_targets: loss.pixel_target, teacher.pixel_target
# ViT name -> (width, depth, mlp_dim, num_heads). big_vision's table; "mu" is a micro model for tests and CPU runs.
VIT_VARIANTS: dict[str, tuple[int, int, int, int]] = {
    "mu": (32, 1, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "H": (1280, 32, 5120, 16),
}
PATCH_SIZES = (8, 14, 16)
ATTENTION_IMPLS = ("auto", "einsum", "xla", "cudnn")  # models/vit.py attention()
# models/vit.py remat_policy(): a jax.checkpoint_policies member by name ("" = nothing saved)
REMAT_POLICIES = ("", "nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable",
                  "everything_saveable")


def parse_variant(variant: str) -> dict[str, int]:
    """``'S/16'`` -> dict(width=384, depth=12, mlp_dim=1536, num_heads=6, patch_size=16).

    Raises ValueError naming the variant when the name or the patch size is unknown.
    """
    match = re.fullmatch(r"(\w+)/(\d+)", variant)
    if not match or match.group(1) not in VIT_VARIANTS:
        raise ValueError(f"Unknown ViT variant {variant!r}: expected '<name>/<patch>' with name in "
                         f"{sorted(VIT_VARIANTS)} and patch in {PATCH_SIZES}, e.g. 'B/16'.")
    patch = int(match.group(2))
    if patch not in PATCH_SIZES:
        raise ValueError(f"ViT variant {variant!r}: patch size {patch} not in {PATCH_SIZES}.")
    width, depth, mlp_dim, heads = VIT_VARIANTS[match.group(1)]
    return dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=heads, patch_size=patch)


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
    if "smoke" in variants:
        c.data.image_size = 48
        c.data.synthetic.image_size = 64
        c.data.framing.render_size = 128  # framed views of a 64 px render need no more
        c.model.variant, c.model.depth = "mu/8", None
        c.predictor = predictor_config(width=32, depth=1, num_heads=2)
        c.masks.min_keep = 1
        c.masks.target_scale = (0.15, 0.2)
        c.evals.knn.every = 4
    if variants & {"smoke", "runlocal"}:
        c.expect_accelerator = False
        c.data.num_train, c.data.num_val = 64, 16
        c.data.worker_count = 0
        c.model.dtype = "float32"
        c.optim.batch_size, c.optim.total_steps, c.optim.warmup_steps = 8, 4, 1
        c.optim.grad_accum_steps = 1  # 8 images a step, sharded over up to 8 devices
        c.log_every = 2
        c.checkpoint.every = 2
        c.checkpoint.keep_period = 0
        shrink_for_smoke(c.evals)
    for method in METHODS.values():  # their own models and schedules
        method.apply_variants(c, variants)
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
    """The predictor (and the stage-1 decoder). ``shared_context``: one sequence per image holding the context
    once and every target block, instead of I-JEPA's one per (image, block); a different computation, off by
    default (models/predictor.py, docs/performance.md)."""
    return ml_collections.ConfigDict(dict(width=width, depth=depth, num_heads=num_heads, mlp_ratio=4,
                                          shared_context=False))


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
        # With grad_accum_steps > 1 on one data-parallel group: > 1 sorts the rows by context size and runs each
        # micro-batch at the smallest of this many context lengths that holds it (train.make_loss_and_grads): the
        # same loss and gradient with less padding, for that many compiled loop bodies. 1 = the batch's length.
        micro_pad_buckets=1,
    ))


def default_config() -> ml_collections.ConfigDict:
    """Every shared key, then the keys of every registered method (``METHODS``), so that ``--config.method=X``
    and X's keys can be set on any config file."""
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
    c.data = default_data_config()  # data/settings.py
    c.loss = ml_collections.ConfigDict(dict(
        kind="smooth_l1",  # latent loss: smooth_l1 (beta 1) | l1 (SALT stage 2) | l2
        normalize_targets=True,  # layer-norm teacher targets over features (I-JEPA); US-JEPA is silent
        # then each feature standardised over the batch's target patches (objectives.standardize_features): for
        # briefly trained teachers whose tokens share one dominant direction (configs/base.py); not in the papers
        standardize_targets=False,
    ))
    c.optim = optim_config()
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))  # -1: all remaining devices
    c.sharding = ml_collections.ConfigDict(dict(strategy="replicate"))  # replicate (data parallel) | fsdp
    c.log_every = 50
    c.profile_steps = 0  # > 0: a jax.profiler trace of the first N steps of this run in <workdir>/profile
    c.eval_every = 1000  # validation loss on data.num_val held-out images; the best encoder -> encoder_best/
    c.checkpoint = ml_collections.ConfigDict(dict(every=1000, max_to_keep=3, keep_period=0, async_save=True))
    c.evals = default_eval_config()  # frozen-encoder evaluation (python -m usjepa_jax.evaluate, evaluation/)
    for method in METHODS.values():
        method.add_keys(c)
    return c


def encoder_kwargs(model_cfg: ml_collections.ConfigDict) -> dict:
    """Keyword arguments of ``VisionTransformer`` from a model config (variant + non-None overrides)."""
    kwargs = parse_variant(model_cfg.variant)
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
    _check(model_cfg.attention in ATTENTION_IMPLS, f"{prefix}.attention", model_cfg.attention,
           f"one of {ATTENTION_IMPLS}")
    _check(model_cfg.remat_policy in REMAT_POLICIES, f"{prefix}.remat_policy", model_cfg.remat_policy,
           f"one of {REMAT_POLICIES}")
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
    _check(o.micro_pad_buckets >= 1, f"{prefix}.micro_pad_buckets", o.micro_pad_buckets, "at least 1")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming the key for any invalid value. Cheap: runs before any device work."""
    _check(config.method in METHODS, "method", config.method, f"one of {tuple(METHODS)}")
    _check(config.loss.kind in LOSS_KINDS, "loss.kind", config.loss.kind, f"one of {LOSS_KINDS}")
    _validate_model("model", config.model, config.data.image_size)
    _validate_optim("optim", config.optim)
    shared = config.predictor.get("shared_context", False)
    _check(isinstance(shared, bool), "predictor.shared_context", shared, "True or False")
    _check(config.sharding.strategy in ("replicate", "fsdp"), "sharding.strategy", config.sharding.strategy,
           "replicate or fsdp")
    _check(config.log_every >= 1, "log_every", config.log_every, "at least 1")
    _check(config.profile_steps >= 0, "profile_steps", config.profile_steps, "0 (off) or a number of steps")
    _check(config.eval_every >= 0, "eval_every", config.eval_every, "0 (off) or a number of steps")
    _check(config.checkpoint.every >= 1, "checkpoint.every", config.checkpoint.every, "at least 1")
    if "evals" in config:
        validate_eval_config(config.evals)
    framing.validate(config.data, TASK_NAMES)
    METHODS[config.method].validate(config)


def stage1_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
    """The run that ``config`` needs before its own (SALT's pixel teacher for ``usjepa`` without a teacher), or
    None: the one place that says whether a run has a stage 1 (``Method.stage1``)."""
    return METHODS[config.method].stage1(config)


# ------------------------------------------------------------------------------------------------ methods
def _no_keys(config: ml_collections.ConfigDict) -> None:
    """Nothing to add or check."""


def _no_variants(config: ml_collections.ConfigDict, variants: set[str]) -> None:
    """Nothing of the method's own to shrink."""


def _no_stage1(config: ml_collections.ConfigDict) -> None:
    return None


@dataclasses.dataclass(frozen=True)
class Method:
    """A training method (``config.method``) as the schema knows it, registered by the module that defines it.

    ``source``: its ``targets.TargetSource`` class, or ``"module:Class"`` for one imported only when a run builds
    it (``targets.from_config``), so that this schema stays free of jax. ``add_keys(config)``: adds the method's
    own keys to a default config (every registered method's keys are in every config, so ``--config.method=X``
    works on any config file); ``validate(config)``: checks them, only when the method is chosen, raising the
    one-line ``ValueError`` that names the key (``check``); ``apply_variants(config, variants)``: what ``:smoke``
    and ``:runlocal`` change in them; ``stage1(config)``: the run it needs first, or None.
    """

    name: str
    source: Any
    add_keys: Callable[[ml_collections.ConfigDict], None] = _no_keys
    validate: Callable[[ml_collections.ConfigDict], None] = _no_keys
    apply_variants: Callable[[ml_collections.ConfigDict, set[str]], None] = _no_variants
    stage1: Callable[[ml_collections.ConfigDict], ml_collections.ConfigDict | None] = _no_stage1


METHODS: dict[str, Method] = {}  # config.method -> Method


def register_method(method: Method) -> Method:
    """Make ``method`` known to ``default_config``, ``validate`` and ``targets.from_config`` (re-registering a
    name replaces it: a module reloaded in a notebook)."""
    METHODS[method.name] = method
    return method


check = _check  # for methods' own validation: raise ValueError("config.KEY=VALUE is invalid: EXPECTED.")


def _usjepa_keys(c: ml_collections.ConfigDict) -> None:
    c.teacher = ml_collections.ConfigDict(dict(
        # Path of a frozen teacher: an exported encoder directory (``<run>/encoder``). Empty: stage 1 trains a
        # reconstruction teacher (``pixel_target``) into ``<workdir>/teacher`` first (reused when already there).
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
        # What stage 1 reconstructs (loss.pixel_target of the pixel method): pixels; pixels low-passed by a
        # Gaussian of lowpass_sigma input pixels (the speckle's grain averaged away); or MaskFeat's histograms of
        # oriented gradients. Options for a teacher that carries anatomy rather than speckle (docs/teachers.md).
        pixel_target="pixels",
        lowpass_sigma=2.0,
        # What stage 1 trains: "reconstruction" (SALT: the pixel method with the targets above, its encoder is
        # the teacher) or "ijepa" (a short I-JEPA run with the teacher's encoder, decoder as predictor and
        # optimisation; its EMA encoder is the teacher; not in the papers, docs/regime.md).
        stage1="reconstruction",
    ))


def _validate_usjepa(config: ml_collections.ConfigDict) -> None:
    """A cache holds un-augmented targets; a teacher trained here (stage 1) is a model of its own to check."""
    if config.teacher.cache:
        _check(not config.data.augment.enabled, "data.augment.enabled", config.data.augment.enabled,
               "False with teacher.cache: the augmentations (random resized crop, flips, blur, speckle, contrast) "
               "change the images on the fly, but the cached targets are the teacher's embeddings of the "
               "un-augmented images; turn augmentation off or drop teacher.cache")
    if _trains_its_teacher(config):
        _check(config.teacher.stage1 in STAGE1_KINDS, "teacher.stage1", config.teacher.stage1,
               f"one of {STAGE1_KINDS}")
        _validate_model("teacher.model", config.teacher.model, config.data.image_size)
        _validate_optim("teacher.optim", config.teacher.optim)
        if config.teacher.stage1 == "reconstruction":
            _validate_pixel_target("teacher", config.teacher, config.teacher.model.variant)
        _check(parse_variant(config.teacher.model.variant)["patch_size"]
               == parse_variant(config.model.variant)["patch_size"], "teacher.model.variant",
               config.teacher.model.variant, "the same patch size as model.variant (targets are per patch)")


def _validate_teacher_unused(config: ml_collections.ConfigDict) -> None:
    """Other methods than usjepa run no frozen teacher, so none can be cached."""
    _check(not config.teacher.cache, "teacher.cache", config.teacher.cache,
           "empty unless method='usjepa' (only a frozen teacher's targets can be precomputed)")


def _usjepa_variants(c: ml_collections.ConfigDict, variants: set[str]) -> None:
    """The teacher's model and optimisation as ``apply_variants`` sets the student's."""
    if "smoke" in variants:
        c.teacher.model.variant, c.teacher.model.depth = "mu/8", None
        c.teacher.decoder = predictor_config(width=32, depth=1, num_heads=2)
    if variants & {"smoke", "runlocal"}:
        c.teacher.model.dtype = "float32"
        o = c.teacher.optim
        o.batch_size, o.total_steps, o.warmup_steps = 8, 4, 1
        o.grad_accum_steps = 1  # 8 images a step, sharded over up to 8 devices


def _trains_its_teacher(config: ml_collections.ConfigDict) -> bool:
    """No teacher given (no checkpoint, no cache): stage 1 trains one."""
    return not config.teacher.checkpoint and not config.teacher.cache


def _usjepa_stage1(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
    """SALT stage 1 when no teacher is given: reconstruction (``teacher.pixel_target``) with the teacher's encoder,
    decoder and optimisation, the same data, masks, mesh and checkpointing; with ``teacher.stage1='ijepa'`` an I-JEPA
    run of the same (the decoder as its predictor), whose EMA encoder becomes the teacher
    (``stage1_teacher_encoder``)."""
    if not _trains_its_teacher(config):
        return None
    stage1 = ml_collections.ConfigDict(config.to_dict())
    stage1.model = config.teacher.model
    stage1.predictor = config.teacher.decoder
    stage1.optim = config.teacher.optim
    if config.teacher.stage1 == "ijepa":
        stage1.method = "ijepa"
        return stage1
    stage1.method = "pixel"
    stage1.loss.normalize_pixels = config.teacher.normalize_pixels
    stage1.loss.pixel_target = config.teacher.pixel_target
    stage1.loss.lowpass_sigma = config.teacher.lowpass_sigma
    return stage1


def stage1_teacher_encoder(config: ml_collections.ConfigDict) -> str:
    """The folder (``layout``) of ``<workdir>/teacher`` that stage 1 leaves as the teacher: the encoder of a
    reconstruction run, the EMA encoder of an I-JEPA run (``teacher.stage1``; absent from runs saved before it)."""
    ijepa = config.get("teacher", {}).get("stage1", "reconstruction") == "ijepa"
    return layout.EMA_ENCODER_DIR if ijepa else layout.ENCODER_DIR


def _ijepa_keys(c: ml_collections.ConfigDict) -> None:
    c.ema = ml_collections.ConfigDict(dict(start=0.996, end=1.0))  # momentum, linear over training


def _validate_ijepa(config: ml_collections.ConfigDict) -> None:
    _check(0 <= config.ema.start <= config.ema.end <= 1, "ema", dict(config.ema), "0 <= start <= end <= 1")
    _validate_teacher_unused(config)


def _pixel_keys(c: ml_collections.ConfigDict) -> None:
    c.loss.normalize_pixels = True  # per-patch normalised targets (MAE)
    c.loss.pixel_target = "pixels"  # or "lowpass" (Gaussian of loss.lowpass_sigma px first) or "hog" (MaskFeat)
    c.loss.lowpass_sigma = 2.0


def _validate_pixel_target(prefix: str, keys: ml_collections.ConfigDict, variant: str) -> None:
    """``pixel_target`` and ``lowpass_sigma`` under ``prefix`` (``loss`` of the pixel method, or ``teacher``) for an
    encoder of ``variant``."""
    _check(keys.pixel_target in PIXEL_TARGETS, f"{prefix}.pixel_target", keys.pixel_target,
           f"one of {PIXEL_TARGETS}")
    _check(keys.lowpass_sigma > 0, f"{prefix}.lowpass_sigma", keys.lowpass_sigma, "a Gaussian's std > 0 pixels")
    if keys.pixel_target == "hog":
        _check(parse_variant(variant)["patch_size"] % 2 == 0, f"{prefix}.pixel_target", keys.pixel_target,
               f"'hog' needs an even patch size (2 x 2 histogram cells per patch), {variant} has an odd one")


def _validate_pixel(config: ml_collections.ConfigDict) -> None:
    _validate_teacher_unused(config)
    _validate_pixel_target("loss", config.loss, config.model.variant)


# The built-in methods, whose sources are in targets.py; the order is the order of their keys in a config.
register_method(Method("usjepa", "usjepa_jax.targets:FrozenTeacher", _usjepa_keys, _validate_usjepa,
                       _usjepa_variants, _usjepa_stage1))
register_method(Method("ijepa", "usjepa_jax.targets:EMATeacher", _ijepa_keys, _validate_ijepa))
register_method(Method("pixel", "usjepa_jax.targets:Pixels", _pixel_keys, _validate_pixel))


def run_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The resolved config a training run saved (``WORKDIR/config.json``); tuples come back as lists."""
    path = Path(workdir) / layout.CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (not a training run, or one older than config.json): "
                                "pass --config=configs/NAME.py as it was trained.")
    return ml_collections.ConfigDict(json.loads(path.read_text()))
