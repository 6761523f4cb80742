"""The pretraining loop: ``train_and_evaluate(config, workdir)``.

Read top to bottom: stages -> mesh -> input pipeline -> models -> optimizer -> abstract state and shardings ->
sharded init -> teacher -> restore -> jitted step -> loop (logging, NaN guard, checkpoints) -> export.

Methods (``config.method``):
- ``usjepa``: the student predicts a *frozen* teacher's patch embeddings at the target blocks. With no
  ``teacher.checkpoint`` the SALT stage 1 (pixel reconstruction) first trains the teacher into
  ``<workdir>/teacher`` and freezes it.
- ``ijepa``: the I-JEPA baseline, the teacher being an EMA of the student's encoder (part of the train state).
- ``pixel``: masked pixel reconstruction under the same masks (the MAE-style baseline, and stage 1).
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from usjepa_jax import checkpointing, masks, objectives, sharding, storage
from usjepa_jax import config as config_lib
from usjepa_jax.data.pipeline import build_dataset
from usjepa_jax.data.sources import EmptySplitError
from usjepa_jax.encoders import FrozenEncoder, export_encoder, is_exported_encoder, load_encoder, normalize_images
from usjepa_jax.encoders import cache as teacher_cache
from usjepa_jax.evaluation.monitor import KnnMonitor
from usjepa_jax.layout import (
    BEST_ENCODER_DIR,
    CHECKPOINTS_DIR,
    ENCODER_DIR,
    LOSS_CURVE_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PROFILE_DIR,
    TEACHER_DIR,
)
from usjepa_jax.masks import MultiBlockMaskSampler
from usjepa_jax.models import Predictor, VisionTransformer
from usjepa_jax.visualize import add_record, plot_training_curves



@flax.struct.dataclass
class TrainState:
    """Everything that is trained or carried between steps. The frozen teacher is *not* in here."""

    step: jax.Array
    params: Any  # {"encoder": ..., "predictor": ...}
    opt_state: Any
    ema_params: Any = None  # ijepa only: the EMA target encoder (no gradient, no optimizer state)


class NonFiniteLossError(FloatingPointError):
    pass


class Preempted(Exception):
    """Raised after the checkpoint of a SIGTERM'd run is written; rerunning the same command resumes it."""


class PreemptionWatcher:
    """Notices SIGTERM (what Cloud TPU and SLURM send before preemption) and makes all processes agree on the
    step at which to stop.

    One process: our own SIGTERM handler sets a flag. Several: JAX's coordination service already listens for
    SIGTERM on every process, and ``reached_preemption_sync_point`` returns True on all of them at the same step.
    """

    def __init__(self) -> None:
        self._flag = False
        self._previous = None
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame) -> None:
        logging.warning("SIGTERM received: saving a checkpoint at the end of this step, then exiting.")
        self._flag = True

    def reached(self, step: int) -> bool:
        if jax.process_count() == 1:
            return self._flag
        return multihost_utils.reached_preemption_sync_point(step)

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


# ------------------------------------------------------------------------------------------------ optimizer
def lr_schedule(o: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warm-up ``lr_start -> lr_peak`` over ``warmup_steps``, then cosine to ``lr_end`` (I-JEPA)."""
    return optax.join_schedules([
        optax.linear_schedule(o.lr_start, o.lr_peak, max(o.warmup_steps, 1)),
        optax.cosine_decay_schedule(o.lr_peak, max(o.total_steps - o.warmup_steps, 1), alpha=o.lr_end / o.lr_peak
                                    if o.lr_peak > 0 else 0.0),
    ], boundaries=[o.warmup_steps])


def wd_schedule(o: ml_collections.ConfigDict) -> optax.Schedule:
    """Cosine *increase* of the weight decay from ``wd_start`` to ``wd_end`` over training (I-JEPA)."""
    def schedule(step):
        frac = jnp.clip(step / max(o.total_steps, 1), 0.0, 1.0)
        return o.wd_end + (o.wd_start - o.wd_end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    return schedule


def decay_mask(params: Any) -> Any:
    """Weight decay on matrices only: no decay on biases, LayerNorm scales and other 1-D parameters."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(o: ml_collections.ConfigDict) -> optax.GradientTransformation:
    adamw = optax.adamw(lr_schedule(o), b1=o.b1, b2=o.b2, weight_decay=wd_schedule(o), mask=decay_mask)
    return optax.chain(optax.clip_by_global_norm(o.grad_clip), adamw) if o.grad_clip else adamw


# ------------------------------------------------------------------------------------------------ models
def build_encoder(model_cfg: ml_collections.ConfigDict) -> VisionTransformer:
    return VisionTransformer(**config_lib.encoder_kwargs(model_cfg), dtype=jnp.dtype(model_cfg.dtype))


def build_predictor(config: ml_collections.ConfigDict, grid_size: tuple[int, int], out_dim: int) -> Predictor:
    p = config.predictor
    return Predictor(grid_size=grid_size, out_dim=out_dim, width=p.width, depth=p.depth, num_heads=p.num_heads,
                     mlp_ratio=p.mlp_ratio, remat=config.model.remat, remat_policy=config.model.remat_policy,
                     attention=config.model.attention, dtype=jnp.dtype(config.model.dtype))


def make_loss_fn(config: ml_collections.ConfigDict, encoder: VisionTransformer, predictor: Predictor,
                 teacher_embed: Callable[[Any, jax.Array], jax.Array] | None,
                 targets_normalized: bool = False) -> Callable:
    """``loss_fn(params, teacher_params, batch) -> (loss, aux)``, pure.

    ``batch``: ``image`` uint8 ``[B, H, W, 1]``, ``context_idx``/``context_valid`` ``[B, C]``,
    ``target_idx``/``target_valid`` ``[B, M, T]``. ``teacher_params`` is the frozen teacher (usjepa) or the EMA
    encoder (ijepa); it only ever enters through ``stop_gradient``. With a teacher cache the batch carries
    ``teacher_targets`` ``[B, N, D]`` (``targets_normalized``: already layer-normalised) and the teacher never runs.
    """
    mean, std = config.data.mean, config.data.std

    def loss_fn(params, teacher_params, batch):
        images = normalize_images(batch["image"], mean, std, encoder.dtype)
        context, _ = encoder.apply({"params": params["encoder"]}, images, batch["context_idx"],
                                   batch["context_valid"])
        pred = predictor.apply({"params": params["predictor"]}, context, batch["context_idx"],
                               batch["context_valid"], batch["target_idx"], batch["target_valid"])
        if config.method == "pixel":
            loss = objectives.pixel_reconstruction_loss(pred, images, batch["target_idx"], batch["target_valid"],
                                                        encoder.patch_size,
                                                        normalize_pixels=config.loss.normalize_pixels)
        else:
            if "teacher_targets" in batch:  # precomputed once per image (encoders/cache.py)
                full = batch["teacher_targets"]
            else:
                full = jax.lax.stop_gradient(teacher_embed(teacher_params, batch["image"]))  # [B, N, D]
            b, m, t = batch["target_idx"].shape
            targets = jnp.take_along_axis(full, batch["target_idx"].reshape(b, m * t, 1), axis=1)
            loss = objectives.latent_prediction_loss(pred, targets.reshape(b, m, t, -1), batch["target_valid"],
                                                     kind=config.loss.kind,
                                                     normalize_targets=config.loss.normalize_targets
                                                     and not targets_normalized,
                                                     standardize_targets=config.loss.standardize_targets)
        return loss, {}

    return loss_fn


def make_train_step(config: ml_collections.ConfigDict, loss_fn: Callable,
                    tx: optax.GradientTransformation) -> Callable:
    """``train_step(state, teacher_params, batch) -> (state, metrics)``; only ``state.params`` is differentiated."""
    lr, wd = lr_schedule(config.optim), wd_schedule(config.optim)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    accum = config.optim.grad_accum_steps

    def accumulated_grads(params, targets_from, batch):
        """Mean loss and gradient over ``accum`` micro-batches, one at a time (``lax.scan``), to fit memory.

        Micro-batch j takes rows ``j, j + accum, ...``: every device keeps its own rows, nothing moves.
        """
        micro = jax.tree.map(lambda x: x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1),
                             batch)

        def body(carry, micro_batch):
            loss_sum, grad_sum = carry
            (loss, _), grads = grad_fn(params, targets_from, micro_batch)
            return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        (loss_sum, grad_sum), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros), micro)
        return loss_sum / accum, jax.tree.map(lambda g: g / accum, grad_sum)

    def train_step(state: TrainState, teacher_params, batch):
        targets_from = state.ema_params if config.method == "ijepa" else teacher_params
        if accum > 1:
            loss, grads = accumulated_grads(state.params, targets_from, batch)
        else:
            (loss, _), grads = grad_fn(state.params, targets_from, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(loss=loss, grad_norm=optax.tree.norm(grads), param_norm=optax.tree.norm(params),
                       lr=lr(state.step), wd=wd(state.step))
        ema_params = state.ema_params
        if config.method == "ijepa":
            momentum = objectives.ema_momentum(state.step, config.optim.total_steps, config.ema.start,
                                               config.ema.end)
            ema_params = objectives.ema_update(ema_params, params["encoder"], momentum)
            metrics["ema_momentum"] = momentum
        return TrainState(state.step + 1, params, opt_state, ema_params), metrics

    return train_step


# ------------------------------------------------------------------------------------------------ helpers
def example_batch(config: ml_collections.ConfigDict, sampler: MultiBlockMaskSampler, batch: int,
                  teacher_targets: tuple[int, int] | None = None) -> dict:
    """A zero batch with the pipeline's shapes and dtypes (for init and shape inference).

    ``teacher_targets``: ``(tokens, width)`` of cached targets, added as ``teacher_targets`` when caching."""
    s = config.data.image_size
    out = dict(image=np.zeros((batch, s, s, 1), np.uint8),
               context_idx=np.zeros((batch, sampler.context_len), np.int32),
               context_valid=np.ones((batch, sampler.context_len), bool),
               target_idx=np.zeros((batch, sampler.num_targets, sampler.target_len), np.int32),
               target_valid=np.ones((batch, sampler.num_targets, sampler.target_len), bool))
    if teacher_targets is not None:
        out[CACHED_TARGETS_KEY] = np.zeros((batch, *teacher_targets), jnp.bfloat16)
    return out


MODEL_KEYS = ("image", "context_idx", "context_valid", "target_idx", "target_valid")
CACHED_TARGETS_KEY = teacher_cache.KEY  # also placed on device when training from a teacher cache


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def read_metrics(workdir: str | Path) -> dict[str, dict[int, float]]:
    """``metrics.jsonl`` as ``{metric: {step: value}}`` (a resumed run may rewrite steps: the last value wins)."""
    path = storage.path(workdir) / METRICS_FILE
    series: dict[str, dict[int, float]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                add_record(series, json.loads(line))
    return series


def write_loss_curve(workdir: Path) -> Path | None:
    """Plot train/validation loss (and the k-NN monitor's accuracy, when on) to ``loss_curve.png``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # not pyplot: no global backend switch inside a notebook

    series = read_metrics(workdir)
    if "loss" not in series:
        return None
    fig = Figure(figsize=(6, 3.5), dpi=120)
    FigureCanvasAgg(fig)
    plot_training_curves(fig.add_subplot(1, 1, 1), series, title=f"{workdir.name}: loss")
    fig.tight_layout()
    out = workdir / LOSS_CURVE_FILE
    storage.save_figure(fig, out)
    return out


# ------------------------------------------------------------------------------------------------ entry
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path,
                       on_log: Callable[[str, dict[str, float]], None] | None = None) -> dict[str, float]:
    """Train by ``config`` in ``workdir`` (resuming from its latest checkpoint); returns the last metrics.

    For ``method='usjepa'`` without ``teacher.checkpoint``, stage 1 first trains (or resumes, or reuses) the
    pixel teacher in ``<workdir>/teacher``. ``on_log(run, metrics)`` (process 0) receives every record written to
    ``metrics.jsonl`` (``run``: the workdir; e.g. a notebook's live loss plot, visualize.LiveLossPlot).
    """
    config_lib.validate(config)
    workdir = storage.path(workdir)
    teacher = None
    if config.method == "usjepa" and config.teacher.cache:  # precomputed targets: the teacher is never loaded
        return _train(config, workdir, teacher_cache.open_for_training(config), on_log)
    if config.method == "usjepa":
        teacher_path = config.teacher.checkpoint
        if not teacher_path:
            stage1_dir = workdir / TEACHER_DIR
            teacher_path = stage1_dir / ENCODER_DIR
            if is_exported_encoder(teacher_path):
                logging.info("Stage 1: reusing the pixel teacher in %s", teacher_path)
            else:
                logging.info("Stage 1: training the pixel-reconstruction teacher in %s", stage1_dir)
                train_and_evaluate(config_lib.stage1_config(config), stage1_dir, on_log)
            logging.info("Stage 2: training the student against the frozen teacher")
        teacher = load_encoder(teacher_path, dtype=jnp.dtype(config.model.dtype), image_size=config.data.image_size)
    return _train(config, workdir, teacher, on_log)


@dataclasses.dataclass
class Trainer:
    """Everything about a run that does not depend on the workdir: models, masks, shardings, init and step.

    ``init(rng) -> TrainState`` (jitted with ``state_shardings`` as out shardings) and
    ``step(state, teacher_params, batch) -> (state, metrics)`` (jitted with explicit shardings, state donated).
    """

    config: ml_collections.ConfigDict
    mesh: Mesh
    encoder: VisionTransformer
    predictor: Predictor
    sampler: MultiBlockMaskSampler
    abstract_state: TrainState
    state_shardings: Any
    teacher_params: Any
    init: Callable[[jax.Array], TrainState]
    step: Callable
    eval_loss: Callable  # (state, teacher_params, batch) -> scalar loss, no update
    teacher_cache: teacher_cache.TeacherCache | None = None  # targets come from the pipeline, not the teacher

    @property
    def num_params(self) -> int:
        return sum(x.size for x in jax.tree.leaves(self.abstract_state.params))

    def place_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """The model's keys on device, the mask arrays cut to the batch's padding bucket (masks.py: only padding
        goes, the rung is decided on the global batch, at most ``sampler.max_batch_shapes`` step shapes)."""
        keys = MODEL_KEYS + ((CACHED_TARGETS_KEY,) if self.teacher_cache is not None else ())
        batch = {k: local_batch[k] for k in keys}
        counts = global_valid_counts(batch)
        batch = masks.fit_batch(batch, *self.sampler.batch_lengths(counts["context"], counts["target"]))
        return sharding.global_batch(batch, self.mesh)


def global_valid_counts(local_batch: dict[str, np.ndarray]) -> dict[str, tuple[int, int]]:
    """``masks.valid_counts`` over the global batch: every process gets the same (min, max), hence the same
    padding bucket, whatever the number of processes."""
    counts = masks.valid_counts(local_batch)
    if jax.process_count() == 1:
        return counts
    mins_maxs = multihost_utils.process_allgather(np.array([counts["context"], counts["target"]]))  # [P, 2, 2]
    low, high = mins_maxs[..., 0].min(axis=0), mins_maxs[..., 1].max(axis=0)
    return {"context": (int(low[0]), int(high[0])), "target": (int(low[1]), int(high[1]))}


def build_trainer(config: ml_collections.ConfigDict,
                  teacher: FrozenEncoder | teacher_cache.TeacherCache | None) -> Trainer:
    """Mesh, models, masks, optimizer, abstract state and shardings, and the jitted init and step.

    A ``TeacherCache`` in place of the teacher: the batches carry the targets, nothing of the teacher is on device.
    """
    # ---- mesh: the global batch is split over every device.
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    per_step = mesh.size * config.optim.grad_accum_steps
    if config.optim.batch_size % per_step:
        raise ValueError(f"config.optim.batch_size={config.optim.batch_size} is not divisible by the {mesh.size} "
                         f"devices x {config.optim.grad_accum_steps} accumulation steps.")

    # ---- models and masks; the predictor's output width is what it predicts.
    encoder = build_encoder(config.model)
    grid = (config.data.image_size // encoder.patch_size,) * 2
    sampler = MultiBlockMaskSampler.from_config(config.masks, grid)
    teacher_embed = None
    cached = isinstance(teacher, teacher_cache.TeacherCache)
    if config.method == "pixel":
        out_dim = encoder.patch_size**2 * 1  # grayscale pixels of one patch
    elif config.method == "ijepa":
        out_dim = encoder.width

        def teacher_embed(ema_params, images):
            return encoder.apply({"params": ema_params},
                                 normalize_images(images, config.data.mean, config.data.std, encoder.dtype))[0]
    else:
        out_dim, teacher_embed = teacher.width, None if cached else teacher.embed
        teacher_patch = teacher.patch_size if cached else teacher.module.patch_size
        if teacher_patch != encoder.patch_size:  # targets are gathered on the student's patch grid
            raise ValueError(f"Teacher {teacher.path} has patch size {teacher_patch}, the student "
                             f"{encoder.patch_size}: their patch grids must match.")
    predictor = build_predictor(config, grid, out_dim)

    # ---- optimizer, abstract state, shardings by rule.
    tx = make_optimizer(config.optim)
    init_batch = example_batch(config, sampler, 1)

    def init(rng: jax.Array) -> TrainState:
        enc_rng, pred_rng = jax.random.split(rng)
        enc_params = encoder.init(enc_rng, normalize_images(init_batch["image"], 0.0, 1.0),
                                  init_batch["context_idx"], init_batch["context_valid"])["params"]
        ctx = jnp.zeros((1, sampler.context_len, encoder.width), encoder.dtype)
        pred_params = predictor.init(pred_rng, ctx, init_batch["context_idx"], init_batch["context_valid"],
                                     init_batch["target_idx"], init_batch["target_valid"])["params"]
        params = {"encoder": enc_params, "predictor": pred_params}
        ema = enc_params if config.method == "ijepa" else None
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), ema)

    abstract_state = jax.eval_shape(init, jax.random.key(0))
    state_shardings = sharding.tree_shardings(abstract_state, mesh, config.sharding.strategy)
    teacher_params = teacher_shardings = None
    if teacher is not None and not cached:
        teacher_shardings = sharding.tree_shardings(teacher.params, mesh, config.sharding.strategy)
        teacher_params = jax.device_put(teacher.params, teacher_shardings)

    # ---- the step: one jit with explicit shardings; the train state is donated, the teacher never is.
    loss_fn = make_loss_fn(config, encoder, predictor, teacher_embed, cached and teacher.normalized)
    in_shardings = (state_shardings, teacher_shardings, sharding.batch_sharding(mesh))
    step = jax.jit(make_train_step(config, loss_fn, tx), in_shardings=in_shardings,
                   out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=(0,))

    def eval_loss(state: TrainState, teacher_params, batch):
        return loss_fn(state.params, state.ema_params if config.method == "ijepa" else teacher_params, batch)[0]

    return Trainer(config, mesh, encoder, predictor, sampler, abstract_state, state_shardings, teacher_params,
                   jax.jit(init, out_shardings=state_shardings), step,
                   jax.jit(eval_loss, in_shardings=in_shardings, out_shardings=sharding.replicated(mesh)),
                   teacher if cached else None)


def validation_batches(trainer: Trainer) -> list[dict[str, np.ndarray]]:
    """The held-out split as fixed batches (masks sampled once, deterministically); empty when too small."""
    config = trainer.config
    if config.eval_every <= 0 or config.data.num_val < config.optim.batch_size:
        return []
    try:
        dataset = build_dataset(config.data, global_batch_size=config.optim.batch_size, split="val",
                                seed=config.seed, mask_sampler=trainer.sampler, num_epochs=1, shuffle=False,
                                teacher_targets=trainer.teacher_cache and trainer.teacher_cache.targets("val"))
    except EmptySplitError as e:  # a small folder may hold no file out: train on, without a validation loss
        logging.warning("No validation loss (and no encoder_best/): %s", e)
        return []
    return list(dataset)


def validation_loss(trainer: Trainer, state: TrainState, batches: list[dict[str, np.ndarray]]) -> float:
    losses = [trainer.eval_loss(state, trainer.teacher_params, trainer.place_batch(b)) for b in batches]
    return float(np.mean(jax.device_get(losses)))


def best_val_loss(workdir: Path) -> float:
    """The validation loss of the encoder already in ``encoder_best`` (inf when none): survives resumes."""
    path = workdir / BEST_ENCODER_DIR / MODEL_FILE
    if not path.exists():
        return math.inf
    return float(json.loads(path.read_text()).get("source", {}).get("val_loss", math.inf))


def _train(config: ml_collections.ConfigDict, workdir: Path, teacher: FrozenEncoder | None,
           on_log: Callable[[str, dict[str, float]], None] | None = None) -> dict[str, float]:
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    o = config.optim
    trainer = build_trainer(config, teacher)

    # ---- input pipeline (mask sampling happens per example, in numpy, inside it).
    dataset = build_dataset(config.data, global_batch_size=o.batch_size, split="train", seed=config.seed,
                            mask_sampler=trainer.sampler,
                            teacher_targets=trainer.teacher_cache and trainer.teacher_cache.targets("train"))
    data_iter = iter(dataset)
    val_batches = validation_batches(trainer)
    best = best_val_loss(workdir)
    knn_monitor = KnnMonitor(config, trainer.encoder, trainer.mesh) if config.evals.knn.every else None

    # ---- checkpoints: resume from the latest, refusing a different teacher.
    meta = dict(method=config.method, teacher_path=teacher.path if teacher else None,
                teacher_hash=teacher.content_hash if teacher else None, config=config.to_json_best_effort(),
                teacher_cache=trainer.teacher_cache.directory if trainer.teacher_cache else None)
    manager = checkpointing.make_manager(workdir / CHECKPOINTS_DIR, max_to_keep=config.checkpoint.max_to_keep,
                                         keep_period=config.checkpoint.keep_period or None,
                                         async_save=config.checkpoint.async_save)
    latest = manager.latest_step()
    if latest is not None:
        saved_meta = checkpointing.restore_meta(manager, latest)
        if saved_meta.get("teacher_hash") != meta["teacher_hash"]:
            raise ValueError(
                f"Cannot resume {workdir}: its checkpoints were trained against teacher "
                f"{saved_meta.get('teacher_path')} (hash {str(saved_meta.get('teacher_hash'))[:12]}), but this run "
                f"uses {meta['teacher_path']} (hash {str(meta['teacher_hash'])[:12]}). Use a new workdir.")
        abstract_with_shardings = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                               trainer.abstract_state, trainer.state_shardings)
        state, data_state, _ = checkpointing.restore(manager, latest, abstract_with_shardings)
        data_iter.set_state(data_state)
        logging.info("Resumed from %s at step %d", workdir / CHECKPOINTS_DIR, latest)
    else:
        state = trainer.init(jax.random.key(config.seed))
    start_step = int(state.step)

    if is_main:
        logging.info("%s: %s encoder (%.2fM trainable params incl. predictor), %d devices %s, batch %d, "
                     "context %d + %dx%d target tokens, steps %d -> %d", config.method, config.model.variant,
                     trainer.num_params / 1e6, trainer.mesh.size, dict(trainer.mesh.shape), o.batch_size,
                     trainer.sampler.context_len, trainer.sampler.num_targets, trainer.sampler.target_len,
                     start_step, o.total_steps)

    # ---- the loop.
    metrics_file = storage.LineLog(workdir / METRICS_FILE) if is_main else None

    def record(values: dict[str, float]) -> None:
        if is_main:
            metrics_file.write(json.dumps(values) + "\n")
            if on_log is not None:
                on_log(str(workdir), values)

    last: dict[str, float] = {}
    window_start, window_steps = time.perf_counter(), 0
    run_start, run_start_step = window_start, start_step
    preemption = PreemptionWatcher()
    tracing = False
    try:
        for step in range(start_step + 1, o.total_steps + 1):
            if config.profile_steps and step == start_step + 1:  # compilation included: it is part of the run
                jax.profiler.start_trace(str(workdir / PROFILE_DIR))
                tracing = True
            batch = trainer.place_batch(next(data_iter))
            state, metrics = trainer.step(state, trainer.teacher_params, batch)
            if tracing and step == start_step + config.profile_steps:
                jax.block_until_ready(metrics)
                jax.profiler.stop_trace()
                tracing = False
                logging.info("Profile of steps %d-%d in %s", start_step + 1, step, workdir / PROFILE_DIR)
            window_steps += 1
            is_log = step % config.log_every == 0 or step == o.total_steps
            is_ckpt = step % config.checkpoint.every == 0 or step == o.total_steps
            if is_log or is_ckpt:
                last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                bad = [k for k in ("loss", "grad_norm", "param_norm") if not math.isfinite(last[k])]
                if bad:
                    raise NonFiniteLossError(
                        f"Non-finite {', '.join(f'{k}={last[k]}' for k in bad)} at step {step}; stopping "
                        f"without saving. The last good "
                        f"checkpoint is step {manager.latest_step()} in {workdir / CHECKPOINTS_DIR}.")
            if is_log:
                now = time.perf_counter()
                steps_per_s = window_steps / (now - window_start)
                overall = (step - run_start_step) / (now - run_start)
                eta = (o.total_steps - step) / max(overall, 1e-9)
                last.update(step=step, steps_per_s=steps_per_s, images_per_s=steps_per_s * o.batch_size)
                if is_main:
                    logging.info("step %d/%d | loss %.4f | grad %.3g | param %.4g | lr %.3g | wd %.3g | "
                                 "%.2f steps/s | %.1f img/s | ETA %s", step, o.total_steps, last["loss"],
                                 last["grad_norm"], last["param_norm"], last["lr"], last["wd"], steps_per_s,
                                 last["images_per_s"], format_duration(eta))
                record(last)
                window_start, window_steps = now, 0
            if val_batches and (step % config.eval_every == 0 or step == o.total_steps):
                val = validation_loss(trainer, state, val_batches)
                if is_main:
                    logging.info("step %d | val_loss %.4f (best %.4f)", step, val, min(val, best))
                record(dict(step=step, val_loss=val))
                if val < best:
                    best = val
                    export_encoder(workdir / BEST_ENCODER_DIR, trainer.encoder, state.params["encoder"],
                                   mean=config.data.mean, std=config.data.std, image_size=config.data.image_size,
                                   source=dict(run=str(workdir), step=step, val_loss=val))
            if knn_monitor is not None and knn_monitor.due(step, o.total_steps):
                knn = knn_monitor(state.params["encoder"])
                if is_main:
                    logging.info("step %d | k-NN monitor: accuracy %.3f, macro-F1 %.3f", step,
                                 knn["knn_accuracy"], knn["knn_macro_f1"])
                record(dict(step=step, **knn))
            if is_ckpt:
                checkpointing.save(manager, step, state, data_iter.get_state(), meta)
            if preemption.reached(step):
                if not is_ckpt:
                    checkpointing.save(manager, step, state, data_iter.get_state(), meta, force=True)
                manager.wait_until_finished()
                raise Preempted(f"Preempted at step {step}: checkpoint saved in {workdir / CHECKPOINTS_DIR}; "
                                "rerun the same command to resume.")
    finally:
        if tracing:
            jax.profiler.stop_trace()
        preemption.close()
        manager.wait_until_finished()
        manager.close()
        if metrics_file:
            metrics_file.close()

    if not last:  # nothing left to train (a rerun of a finished run): report what was logged last
        last = {key: values[max(values)] for key, values in read_metrics(workdir).items()}

    # ---- export the trained encoder (a teacher for later runs, and the evaluation's input).
    export_encoder(workdir / ENCODER_DIR, trainer.encoder, state.params["encoder"], mean=config.data.mean,
                   std=config.data.std, image_size=config.data.image_size)
    if is_main:
        curve = write_loss_curve(workdir)
        logging.info("Done: encoder in %s, loss curve in %s", workdir / ENCODER_DIR, curve)
    return last
