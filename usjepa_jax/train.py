"""The pretraining loop: ``train_and_evaluate(config, workdir)``.

Reads in execution order. ``train_and_evaluate`` runs SALT stage 1 first when a US-JEPA config names no teacher
(``train_stage1``: the reconstruction teacher in ``<workdir>/teacher``), then ``train``: trainer (``build_trainer``: mesh,
models and targets, optimizer, shardings, the jitted init and step) -> run folder -> data -> restore -> loop
(step, log, validation loss and best encoder, k-NN monitor, checkpoint, preemption) -> export.

The method is data for the trainer, not a branch in it: ``config.method`` picks a target source
(``targets.py``: a frozen teacher or its cache for ``usjepa``, an EMA of the student for ``ijepa``, the pixels
for ``pixel``) and the step has one path for all of them. The method's facts and our deviations: docs/method.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
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
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from usjepa_jax import checkpointing, masks, objectives, sharding, storage, targets
from usjepa_jax import config as config_lib
from usjepa_jax.checkpointing import PreemptionWatcher
from usjepa_jax.data.pipeline import build_dataset
from usjepa_jax.data.sources import EmptySplitError
from usjepa_jax.encoders import export_encoder, is_exported_encoder, normalize_images
from usjepa_jax.errors import Diverged, Preempted, ResumeRefused
from usjepa_jax.evaluation.monitor import KnnMonitor
from usjepa_jax.layout import (BEST_ENCODER_DIR, CHECKPOINTS_DIR, CONFIG_FILE, EMA_ENCODER_DIR, ENCODER_DIR,
                               MODEL_FILE, PROFILE_DIR, TEACHER_DIR)
from usjepa_jax.masks import MultiBlockMaskSampler
from usjepa_jax.models import Predictor, VisionTransformer
from usjepa_jax.optim import lr_schedule, make_optimizer, wd_schedule
from usjepa_jax.run_log import (MetricsWriter, OnLog, StepTrace, Throughput, format_eta, last_values,
                                write_loss_curve)

MODEL_KEYS = ("image", "context_idx", "context_valid", "target_idx", "target_valid")


@flax.struct.dataclass
class TrainState:
    """Everything that is trained or carried between steps. A frozen teacher is *not* in here."""

    step: jax.Array
    params: Any  # {"encoder": ..., "predictor": ...}
    opt_state: Any
    targets: Any = None  # the target source's state (the EMA encoder of ijepa), no gradient, no optimizer state


def every(step: int, period: int, total_steps: int) -> bool:
    """The one rule for periodic actions: every ``period`` steps and at the last step; ``period <= 0`` is off."""
    return period > 0 and (step % period == 0 or step == total_steps)


# ------------------------------------------------------------------------------------------------ models
def build_encoder(model_cfg: ml_collections.ConfigDict) -> VisionTransformer:
    return VisionTransformer(**config_lib.encoder_kwargs(model_cfg), dtype=jnp.dtype(model_cfg.dtype))


def build_predictor(config: ml_collections.ConfigDict, grid_size: tuple[int, int], out_dim: int) -> Predictor:
    p = config.predictor
    return Predictor(grid_size=grid_size, out_dim=out_dim, width=p.width, depth=p.depth, num_heads=p.num_heads,
                     mlp_ratio=p.mlp_ratio, remat=config.model.remat, remat_policy=config.model.remat_policy,
                     attention=config.model.attention, dtype=jnp.dtype(config.model.dtype),
                     shared_context=p.get("shared_context", False))  # absent from runs saved before the switch


# ------------------------------------------------------------------------------------------------ the step
def make_predict_fn(config: ml_collections.ConfigDict, encoder: VisionTransformer, predictor: Predictor) -> Callable:
    """``predict(params, batch) -> [B, M, T, D]``: the student encodes each context, the predictor predicts each
    target block (``batch``: ``image`` uint8 ``[B, H, W, 1]``, ``context_idx``/``context_valid`` ``[B, C]``,
    ``target_idx``/``target_valid`` ``[B, M, T]``, padded with validity masks, masks.py)."""
    mean, std = config.data.mean, config.data.std

    def predict(params, batch):
        images = normalize_images(batch["image"], mean, std, encoder.dtype)
        context, _ = encoder.apply({"params": params["encoder"]}, images, batch["context_idx"],
                                   batch["context_valid"])
        return predictor.apply({"params": params["predictor"]}, context, batch["context_idx"],
                               batch["context_valid"], batch["target_idx"], batch["target_valid"])

    return predict


def block_targets(source: targets.TargetSource, target_state, frozen, batch) -> jax.Array:
    """``[B, M, T, D]``: the source's targets at the batch's target blocks, without gradient (not yet
    ``prepare``d: that pools the whole global batch)."""
    full = jax.lax.stop_gradient(source.targets(target_state, frozen, batch))  # [B, N, D]
    return objectives.gather_patches(full, batch["target_idx"])


def make_loss_fn(config: ml_collections.ConfigDict, encoder: VisionTransformer, predictor: Predictor,
                 source: targets.TargetSource) -> Callable:
    """``loss_fn(params, target_state, frozen, batch) -> (loss, aux)``, pure; one path for every method.

    ``batch``: see ``make_predict_fn``, plus the source's ``batch_keys``. ``target_state``/``frozen``: the
    source's state and frozen parameters; the targets only ever enter through ``stop_gradient``.
    """
    predict = make_predict_fn(config, encoder, predictor)

    def loss_fn(params, target_state, frozen, batch):
        target = block_targets(source, target_state, frozen, batch)
        return source.loss(predict(params, batch), target, batch["target_valid"]), {}

    return loss_fn


def split_micro_batches(tree, n: int):
    """Every ``[B, ...]`` leaf -> ``[n, B / n, ...]``: micro-batch j takes rows ``j, j + n, ...``, so every device
    keeps its own rows and nothing moves."""
    return jax.tree.map(lambda x: x.reshape((x.shape[0] // n, n) + x.shape[1:]).swapaxes(0, 1), tree)


def sum_over_groups(grads, mesh: Mesh):
    """Per-group gradient sums (leaves ``[groups, ...]``) -> their sum. On CPU devices without FSDP every leaf goes
    into one flat vector first, so the sum is one all-reduce: between CPU processes (gloo) each array pays a few
    milliseconds of latency, which over a model's ~100 parameter arrays took longer than the step's compute
    (docs/performance.md). Accelerators' compilers combine the all-reduces themselves."""
    if mesh.shape["fsdp"] > 1 or mesh.devices.flat[0].platform != "cpu":
        return jax.tree.map(lambda g: g.sum(0), grads)
    leaves, treedef = jax.tree.flatten(grads)
    total = jnp.concatenate([g.reshape(g.shape[0], -1) for g in leaves], axis=1).sum(0)
    ends = np.cumsum([math.prod(g.shape[1:]) for g in leaves])
    return jax.tree.unflatten(treedef, [part.reshape(g.shape[1:])
                                        for part, g in zip(jnp.split(total, ends[:-1]), leaves)])


def make_loss_and_grads(config: ml_collections.ConfigDict, encoder: VisionTransformer, predictor: Predictor,
                        source: targets.TargetSource, mesh: Mesh | None = None) -> Callable:
    """``loss_and_grads(params, target_state, frozen, batch) -> (loss, grads)`` of ``make_loss_fn``'s loss.

    With ``optim.grad_accum_steps = n > 1`` the batch is processed as n sequential micro-batches (``lax.scan``)
    and the result is still the whole batch's loss and gradient (equal up to float summation order, tested): the
    targets of every micro-batch are computed first and ``prepare``d over the whole global batch (the batch
    statistics of ``loss.standardize_targets``), then each micro-batch adds its blocks' mean losses divided by
    the batch's number of blocks, and its gradient. Why: memory on accelerators, and speed on CPUs, where a
    micro-batch's activations stay in cache while the whole batch's stream through memory (docs/performance.md).

    With a ``mesh`` of several data-parallel groups (``mesh.data > 1``), each group sums the gradients of its own
    rows over the micro-batches and the groups' sums are added once, after the loop: one gradient all-reduce per
    step instead of one per micro-batch (the same sum; between processes a gradient-sized all-reduce costs far
    more than a micro-batch's compute).

    With ``optim.micro_pad_buckets = k > 1`` (one data-parallel group), the rows are first sorted by context size,
    so that each micro-batch holds contexts of similar size, and each micro-batch runs cut to the smallest of k
    lengths (the batch's context length minus multiples of ``masks.pad_step``) that holds its contexts: a
    ``lax.switch`` over k compiled bodies. Only padding goes, so the loss and gradient are the same (up to float
    summation order); the step compiles k bodies instead of one.
    """
    loss_fn = make_loss_fn(config, encoder, predictor, source)
    predict = make_predict_fn(config, encoder, predictor)
    accum = config.optim.grad_accum_steps
    groups = mesh.shape["data"] if mesh is not None and accum > 1 else 1
    # Under the per-group vmap a switch would run every branch: per-micro-batch lengths on one group only.
    per_micro_lengths = accum > 1 and groups == 1 and config.optim.micro_pad_buckets > 1

    def sorted_by_context(batch):
        """The rows reordered so that micro-batch j (rows j, j + n, ..., ``split_micro_batches``) holds the j-th
        smallest contexts: the loss is a sum over rows and the targets' statistics pool all of them."""
        order = jnp.argsort(batch["context_valid"].sum(-1), stable=True)
        rows = order.reshape(accum, -1).T.reshape(-1)
        return jax.tree.map(lambda x: x[rows], batch)

    def loss_and_grads(params, target_state, frozen, batch):
        if accum == 1:
            (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, target_state, frozen, batch)
            return loss, grads
        if per_micro_lengths:
            batch = sorted_by_context(batch)
        micro = split_micro_batches(batch, accum)
        valid = batch["target_valid"]
        target = jax.lax.map(lambda mb: block_targets(source, target_state, frozen, mb), micro)  # [n, B/n, ...]
        merged = target.swapaxes(0, 1).reshape(valid.shape + target.shape[-1:])  # back to the batch's row order
        target = split_micro_batches(source.prepare(merged, valid), accum)
        num_blocks = jnp.maximum(objectives.blocks_with_patches(valid), 1.0)

        def micro_loss(p, mb, mb_target):
            per_patch = source.per_patch_loss(predict(p, mb), mb_target)
            return objectives.block_mean_sum(per_patch, mb["target_valid"]) / num_blocks

        def micro_loss_and_grads(mb, mb_target):
            if not per_micro_lengths:
                return jax.value_and_grad(micro_loss)(params, mb, mb_target)
            lengths = masks.padding_ladder(mb["context_idx"].shape[1], config.masks.pad_step,
                                           config.optim.micro_pad_buckets)
            branches = [lambda n=n: jax.value_and_grad(micro_loss)(
                params, masks.fit_batch(mb, n, mb["target_idx"].shape[-1]), mb_target) for n in lengths]
            # The smallest length that holds every context of the micro-batch: only padding is cut. The sums stay
            # outside the switch, so the carry is not passed through (and copied by) its branches.
            return jax.lax.switch(jnp.searchsorted(jnp.asarray(lengths), mb["context_valid"].sum(-1).max()),
                                  branches)

        if groups == 1:
            def body(carry, inputs):
                loss, grads = micro_loss_and_grads(*inputs)
                return (carry[0] + loss, jax.tree.map(jnp.add, carry[1], grads)), None

            zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
            (loss, grads), _ = jax.lax.scan(body, zeros, (micro, target))
            return loss, grads

        # Per-group sums: a leading [groups] axis over the mesh's data axis, so the gradient of a group's rows
        # stays on its devices (vmap: one gradient per group, not their sum) until the sum after the loop.
        def group_rows(x):  # a micro-batch's rows [R, ...] -> [groups, R / groups, ...], each group's own
            return jax.lax.with_sharding_constraint(x.reshape((groups, -1) + x.shape[1:]),
                                                    NamedSharding(mesh, PartitionSpec("data", "fsdp")))

        def per_group(p):
            spec = sharding.leaf_spec(p.shape, config.sharding.strategy, mesh.shape["fsdp"])
            return NamedSharding(mesh, PartitionSpec("data", *spec))

        group_grads = jax.vmap(jax.value_and_grad(micro_loss), in_axes=(None, 0, 0))

        def group_body(carry, inputs):
            loss, grads = group_grads(params, *jax.tree.map(group_rows, inputs))
            grads = jax.tree.map(lambda g, c: jax.lax.with_sharding_constraint(c + g, per_group(g[0])),
                                 grads, carry[1])
            return (carry[0] + loss, grads), None

        zeros = jax.tree.map(lambda p: jax.lax.with_sharding_constraint(jnp.zeros((groups,) + p.shape, p.dtype),
                                                                        per_group(p)), params)
        zero_loss = jax.lax.with_sharding_constraint(jnp.zeros((groups,), jnp.float32),
                                                     NamedSharding(mesh, PartitionSpec("data")))
        (loss, grads), _ = jax.lax.scan(group_body, (zero_loss, zeros), (micro, target))
        return loss.sum(), sum_over_groups(grads, mesh)

    return loss_and_grads


def make_train_step(config: ml_collections.ConfigDict, encoder: VisionTransformer, predictor: Predictor,
                    tx: optax.GradientTransformation, source: targets.TargetSource,
                    mesh: Mesh | None = None) -> Callable:
    """``train_step(state, frozen, batch) -> (state, metrics)``: ``frozen`` is the source's frozen parameters
    (a teacher's, or None), ``batch`` the placed global batch (``Trainer.place_batch``); only ``state.params`` is
    differentiated (``make_loss_and_grads``). ``metrics``: scalars ``loss``, ``grad_norm``, ``param_norm``,
    ``lr``, ``wd`` (+ the source's, e.g. ``ema_momentum``)."""
    lr, wd = lr_schedule(config.optim), wd_schedule(config.optim)
    loss_and_grads = make_loss_and_grads(config, encoder, predictor, source, mesh)

    def train_step(state: TrainState, frozen, batch):
        loss, grads = loss_and_grads(state.params, state.targets, frozen, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        target_state, source_metrics = source.update(state.targets, params["encoder"], state.step)
        metrics = dict(loss=loss, grad_norm=optax.tree.norm(grads), param_norm=optax.tree.norm(params),
                       lr=lr(state.step), wd=wd(state.step), **source_metrics)
        return TrainState(state.step + 1, params, opt_state, target_state), metrics

    return train_step


# ------------------------------------------------------------------------------------------------ trainer
@dataclasses.dataclass
class Trainer:
    """Everything about a run that does not depend on the workdir: models, masks, targets, shardings, init, step.

    ``init(rng) -> TrainState`` (jitted with ``state_shardings`` as out shardings);
    ``step(state, frozen_params, batch) -> (state, metrics)`` (see ``make_train_step``; jitted with explicit
    shardings, the state donated, ``frozen_params`` never); ``eval_loss(state, frozen_params, batch)``: the
    loss, no update.
    """

    config: ml_collections.ConfigDict
    mesh: Mesh
    encoder: VisionTransformer
    predictor: Predictor
    sampler: MultiBlockMaskSampler
    source: targets.TargetSource
    abstract_state: TrainState
    state_shardings: Any
    frozen_params: Any  # the source's frozen parameters on device (a teacher's), or None
    init: Callable[[jax.Array], TrainState]
    step: Callable
    eval_loss: Callable
    encoder_finite: Callable

    @property
    def num_params(self) -> int:
        return sum(x.size for x in jax.tree.leaves(self.abstract_state.params))

    def place_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """The model's keys (and the source's) on device, the mask arrays cut to the batch's padding bucket
        (masks.py: only padding goes, the rung is decided on the global batch, at most
        ``sampler.max_batch_shapes`` step shapes)."""
        batch = {k: local_batch[k] for k in MODEL_KEYS + self.source.batch_keys}
        counts = sharding.global_min_max(masks.valid_counts(batch))  # the same bucket on every process
        batch = masks.fit_batch(batch, *self.sampler.batch_lengths(counts["context"], counts["target"]))
        return sharding.global_batch(batch, self.mesh)


def example_batch(config: ml_collections.ConfigDict, sampler: MultiBlockMaskSampler, batch: int) -> dict:
    """A zero batch with the pipeline's model inputs (shapes and dtypes, for init and shape inference)."""
    s = config.data.image_size
    return dict(image=np.zeros((batch, s, s, 1), np.uint8),
                context_idx=np.zeros((batch, sampler.context_len), np.int32),
                context_valid=np.ones((batch, sampler.context_len), bool),
                target_idx=np.zeros((batch, sampler.num_targets, sampler.target_len), np.int32),
                target_valid=np.ones((batch, sampler.num_targets, sampler.target_len), bool))


def xla_flops(compiled) -> float:
    """FLOPs of a compiled computation by XLA's cost analysis."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0))


def step_flops(config: ml_collections.ConfigDict, source: targets.TargetSource | None = None,
               batch: dict | None = None) -> float:
    """XLA's FLOPs of one train step on ``batch`` (default: an example global batch), compiled without the
    micro-batch loop: XLA counts a loop's body once, so a step of k micro-batches would report about 1/k of its
    work (the sum over them is the same work)."""
    whole = config.copy_and_resolve_references()
    whole.optim.grad_accum_steps = 1
    trainer = build_trainer(whole, source)
    if batch is None:
        batch = example_batch(whole, trainer.sampler, whole.optim.batch_size)
    return xla_flops(trainer.step.lower(trainer.abstract_state, trainer.frozen_params, batch).compile())


def micro_batches(batch_size: int, devices: int, grad_accum_steps: int) -> int:
    """How many sequential micro-batches a step runs: ``grad_accum_steps``, but at most one image per device in
    each. The accumulation is a speed and memory setting (the loss and gradient are the whole batch's, up to float
    summation order), so a config tuned on one CPU (``configs/base.py``: 32 micro-batches of 2 images) still runs
    on 8 devices (8 micro-batches of one image per device) rather than failing."""
    return max(1, min(grad_accum_steps, batch_size // max(devices, 1)))


def build_trainer(config: ml_collections.ConfigDict, source: targets.TargetSource | None = None) -> Trainer:
    """Mesh, models, masks, targets, optimizer, abstract state and shardings, and the jitted init and step.

    ``source``: where the targets come from; by default ``targets.from_config`` (loads ``teacher.checkpoint``,
    opens ``teacher.cache``, or builds the EMA / pixel source). Tests and benchmarks pass their own.
    """
    # ---- mesh: the global batch is split over every device, each micro-batch too.
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    accum = micro_batches(config.optim.batch_size, mesh.size, config.optim.grad_accum_steps)
    if accum != config.optim.grad_accum_steps:
        logging.info("optim.grad_accum_steps=%d: %d devices hold %d images each, so %d micro-batches of one image "
                     "per device (the same loss and gradient)", config.optim.grad_accum_steps, mesh.size,
                     config.optim.batch_size // mesh.size, accum)
        config = config.copy_and_resolve_references()
        config.optim.grad_accum_steps = accum
    per_step = mesh.size * config.optim.grad_accum_steps
    if config.optim.batch_size % per_step:
        raise ValueError(f"config.optim.batch_size={config.optim.batch_size} is not divisible by the {mesh.size} "
                         f"devices x {config.optim.grad_accum_steps} accumulation steps.")

    # ---- models, masks and targets; the predictor's output width is the targets'.
    encoder = build_encoder(config.model)
    grid = (config.data.image_size // encoder.patch_size,) * 2
    sampler = MultiBlockMaskSampler.from_config(config.masks, grid)
    source = source or targets.from_config(config, encoder)
    source.check_student(encoder.patch_size)
    predictor = build_predictor(config, grid, source.width)

    # ---- optimizer, abstract state, shardings by rule (the frozen parameters by the same rules).
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
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), source.init_state(enc_params))

    abstract_state = jax.eval_shape(init, jax.random.key(0))
    state_shardings = sharding.tree_shardings(abstract_state, mesh, config.sharding.strategy)
    frozen_params = frozen_shardings = None
    if source.frozen_params is not None:
        frozen_shardings = sharding.tree_shardings(source.frozen_params, mesh, config.sharding.strategy)
        frozen_params = jax.device_put(source.frozen_params, frozen_shardings)

    # ---- the step: one jit with explicit shardings; the train state is donated, the frozen parameters never.
    loss_fn = make_loss_fn(config, encoder, predictor, source)
    in_shardings = (state_shardings, frozen_shardings, sharding.batch_sharding(mesh))
    step = jax.jit(make_train_step(config, encoder, predictor, tx, source, mesh), in_shardings=in_shardings,
                   out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=(0,))
    eval_loss = jax.jit(lambda state, frozen, batch: loss_fn(state.params, state.targets, frozen, batch)[0],
                        in_shardings=in_shardings, out_shardings=sharding.replicated(mesh))

    def encoder_finite(params, batch) -> jax.Array:
        # The full image, as an export's user embeds it: a diverged encoder can keep a finite training loss on
        # its context tokens while the full image's tokens overflow to NaN.
        tokens, _ = encoder.apply({"params": params}, normalize_images(batch["image"], config.data.mean,
                                                                       config.data.std, encoder.dtype))
        return jnp.all(jnp.isfinite(tokens)) & jnp.all(jnp.array([jnp.isfinite(x).all()
                                                                   for x in jax.tree.leaves(params)]))

    encoder_finite = jax.jit(encoder_finite, in_shardings=(state_shardings.params["encoder"],
                                                          sharding.batch_sharding(mesh)),
                             out_shardings=sharding.replicated(mesh))
    return Trainer(config, mesh, encoder, predictor, sampler, source, abstract_state, state_shardings,
                   frozen_params, jax.jit(init, out_shardings=state_shardings), step, eval_loss, encoder_finite)


# ------------------------------------------------------------------------------------------------ helpers
def validation_batches(config: ml_collections.ConfigDict, sampler: MultiBlockMaskSampler,
                       attach: Any = None) -> list[dict[str, np.ndarray]]:
    """The held-out split as fixed batches (masks sampled once, deterministically); empty when too small.

    ``attach``: the target source's transform for the split (``TargetSource.pipeline_transform``)."""
    if config.eval_every <= 0 or config.data.num_val < config.optim.batch_size:
        return []
    try:
        dataset = build_dataset(config.data, global_batch_size=config.optim.batch_size, split="val",
                                seed=config.seed, mask_sampler=sampler, num_epochs=1, shuffle=False,
                                teacher_targets=attach)
    except EmptySplitError as e:  # a small folder may hold no file out: train on, without a validation loss
        logging.warning("No validation loss (and no encoder_best/): %s", e)
        return []
    return list(dataset)


def best_val_loss(workdir: Path) -> float:
    """The validation loss of the encoder already in ``encoder_best`` (inf when none): survives resumes."""
    path = workdir / BEST_ENCODER_DIR / MODEL_FILE
    if not path.exists():
        return math.inf
    return float(json.loads(path.read_text()).get("source", {}).get("val_loss", math.inf))


def check_finite(values: dict[str, float], step: int, where: str) -> dict[str, float]:
    """``values`` when all are finite; otherwise the run stops (``Diverged``) before anything is saved or
    exported. Every value the host sees goes through here: the step's metrics, the validation loss, the k-NN
    monitor's accuracy (NaN when the encoder's features are)."""
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        raise Diverged(f"Non-finite {', '.join(f'{k}={values[k]}' for k in bad)} at step {step}; stopping without "
                       f"saving. The last good checkpoint is {where}.")
    return values


def host_metrics(metrics: dict[str, jax.Array], step: int, where: str) -> dict[str, float]:
    """The step's metrics on the host (``check_finite``)."""
    return check_finite({k: float(v) for k, v in jax.device_get(metrics).items()}, step, where)


def export_checked(trainer: Trainer, params: Any, local_batch: dict[str, np.ndarray], directory: Path,
                   step: int, source: dict[str, Any] | None = None) -> None:
    """Export the encoder ``params`` (the student's, or an EMA copy's) to ``directory`` unless it is non-finite
    (``Trainer.encoder_finite`` on ``local_batch``): a diverged encoder is never written where evaluation or a
    later run would pick it up."""
    if not bool(trainer.encoder_finite(params, trainer.place_batch(local_batch))):
        raise Diverged(f"The encoder at step {step} has non-finite parameters or embeds images to NaN/inf; "
                       f"{directory} not written.")
    config = trainer.config
    export_encoder(directory, trainer.encoder, params, mean=config.data.mean, std=config.data.std,
                   image_size=config.data.image_size, source=source)


# ------------------------------------------------------------------------------------------------ entry
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path,
                       on_log: OnLog | None = None) -> dict[str, float]:
    """Train by ``config`` in ``workdir`` (resuming from its latest checkpoint); returns the last metrics.

    For ``method='usjepa'`` with neither ``teacher.checkpoint`` nor ``teacher.cache``, stage 1 first trains (or
    resumes, or reuses) the reconstruction teacher in ``<workdir>/teacher``. ``on_log(run, record)`` (process 0) receives
    every record written to ``metrics.jsonl`` (``run``: the workdir; e.g. ``visualize.LiveLossPlot``).
    """
    config_lib.validate(config)
    workdir = storage.path(workdir)  # local or a bucket (gs://), through etils.epath
    stage1 = config_lib.stage1_config(config)  # the one rule for a stage 1 (config.Method.stage1)
    if stage1 is not None:
        config = train_stage1(config, stage1, workdir, on_log)
    return train(config, workdir, on_log)


def train_stage1(config: ml_collections.ConfigDict, stage1: ml_collections.ConfigDict, workdir: Path,
                 on_log: OnLog | None) -> ml_collections.ConfigDict:
    """SALT stage 1 in ``<workdir>/teacher`` (``stage1``, ``config_lib.stage1_config``): the reconstruction teacher
    (targets ``teacher.pixel_target``), or with ``teacher.stage1='ijepa'`` an I-JEPA run whose EMA encoder teaches;
    trained, resumed, or reused when that encoder is already exported. Returns the stage-2 config, its
    ``teacher.checkpoint`` that encoder."""
    stage1_dir = workdir / TEACHER_DIR
    teacher_dir = stage1_dir / config_lib.stage1_teacher_encoder(config)
    if is_exported_encoder(teacher_dir):
        logging.info("Stage 1: reusing the teacher in %s", teacher_dir)
    else:
        logging.info("Stage 1: training the teacher (%s, method %s) in %s", config.teacher.stage1, stage1.method,
                     stage1_dir)
        train(stage1, stage1_dir, on_log)
    logging.info("Stage 2: training the student against the frozen teacher")
    config = config.copy_and_resolve_references()
    config.teacher.checkpoint = str(teacher_dir)
    return config


def train(config: ml_collections.ConfigDict, workdir: Path, on_log: OnLog | None = None) -> dict[str, float]:
    """One training run in ``workdir`` (no stages): see the module docstring for the order."""
    o, is_main = config.optim, jax.process_index() == 0

    # ---- trainer: mesh, models and targets (a missing teacher or a bad cache fails here, before any write),
    # optimizer, shardings, the jitted init and step.
    trainer = build_trainer(config)
    source = trainer.source

    # ---- data (mask sampling happens per example, in numpy, inside the pipeline).
    data_iter = iter(build_dataset(config.data, global_batch_size=o.batch_size, split="train", seed=config.seed,
                                   mask_sampler=trainer.sampler, teacher_targets=source.pipeline_transform("train")))
    val_batches = validation_batches(config, trainer.sampler, source.pipeline_transform("val"))
    knn_monitor = KnnMonitor(config, trainer.encoder, trainer.mesh) if config.evals.knn.every else None

    # ---- restore the newest checkpoint that restores (refusing one trained against another teacher or config;
    # moving damaged ones aside), or init.
    meta = dict(method=config.method, config=config.to_json_best_effort(), **source.provenance())
    ckpt_dir = workdir / CHECKPOINTS_DIR
    workdir.mkdir(parents=True, exist_ok=True)
    manager = checkpointing.make_manager(ckpt_dir, max_to_keep=config.checkpoint.max_to_keep,
                                         keep_period=config.checkpoint.keep_period or None,
                                         async_save=config.checkpoint.async_save)

    def same_teacher(saved: dict[str, Any]) -> None:
        if saved.get("teacher_hash") != meta["teacher_hash"]:
            raise ResumeRefused(
                f"Cannot resume {workdir}: its checkpoints were trained against teacher {saved.get('teacher_path')} "
                f"(hash {str(saved.get('teacher_hash'))[:12]}), but this run uses {meta['teacher_path']} (hash "
                f"{str(meta['teacher_hash'])[:12]}). Use a new workdir.")

    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), trainer.abstract_state,
                          trainer.state_shardings)
    try:
        restored = checkpointing.restore_latest(manager, target, same_teacher)
    except BaseException:
        manager.close()
        raise
    if restored is None:
        state = trainer.init(jax.random.key(config.seed))
    else:
        state, data_state, step = restored
        data_iter.set_state(data_state)
        logging.info("Resumed from %s at step %d", ckpt_dir, step)

    # ---- run folder: the resolved config (``evaluate`` reads it), written only now that the resume is accepted.
    if is_main:
        (workdir / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2) + "\n")
    start_step, best = int(state.step), best_val_loss(workdir)
    logging.info("%s: %s encoder (%.2fM trainable params incl. predictor), %d devices %s, batch %d, context %d + "
                 "%dx%d target tokens, steps %d -> %d", config.method, config.model.variant, trainer.num_params / 1e6,
                 trainer.mesh.size, dict(trainer.mesh.shape), o.batch_size, trainer.sampler.context_len,
                 trainer.sampler.num_targets, trainer.sampler.target_len, start_step, o.total_steps)

    # ---- the loop: one jitted step per batch; the host looks at metrics only when it logs or saves.
    writer = MetricsWriter(workdir, on_log, enabled=is_main)
    throughput = Throughput(start_step, o.total_steps, o.batch_size)
    preemption = PreemptionWatcher()
    trace = StepTrace(workdir / PROFILE_DIR, start_step + 1, config.profile_steps)
    last: dict[str, float] = {}
    # a batch to check an encoder on before exporting it: held-out images when there are, else the first batch
    probe = val_batches[0] if val_batches else None

    def kept() -> str:  # what a divergence leaves; asked only when the host looks at values, not every step
        return f"step {manager.latest_step()} in {ckpt_dir}"

    try:
        for step in range(start_step + 1, o.total_steps + 1):
            trace.before(step)
            local_batch = next(data_iter)
            probe = local_batch if probe is None else probe
            state, metrics = trainer.step(state, trainer.frozen_params, trainer.place_batch(local_batch))
            trace.after(step, metrics)
            log = every(step, config.log_every, o.total_steps)
            preempted = preemption.reached(step)
            save = every(step, config.checkpoint.every, o.total_steps) or preempted
            if log or save:
                last = host_metrics(metrics, step, kept())
            if log:
                last.update(step=step, **throughput(step))
                logging.info("step %d/%d | loss %.4f | grad %.3g | param %.4g | lr %.3g | wd %.3g | %.2f steps/s | "
                             "%.1f img/s | ETA %s", step, o.total_steps, last["loss"], last["grad_norm"],
                             last["param_norm"], last["lr"], last["wd"], last["steps_per_s"], last["images_per_s"],
                             format_eta(last["eta_s"]))
                writer.write(step, last)
            if val_batches and every(step, config.eval_every, o.total_steps):
                val = float(np.mean(jax.device_get([trainer.eval_loss(state, trainer.frozen_params,
                                                                      trainer.place_batch(b)) for b in val_batches])))
                check_finite(dict(val_loss=val), step, kept())
                logging.info("step %d | val_loss %.4f (best %.4f)", step, val, min(val, best))
                writer.write(step, dict(val_loss=val))
                # The best encoder is exported, not kept as a checkpoint: orbax's best_fn would choose which train
                # checkpoints to keep, but resuming needs the latest ones.
                if val < best:
                    best = val
                    export_checked(trainer, state.params["encoder"], probe, workdir / BEST_ENCODER_DIR, step,
                                   source=dict(run=str(workdir), step=step, val_loss=val))
            if knn_monitor is not None and every(step, config.evals.knn.every, o.total_steps):
                knn = check_finite(knn_monitor(state.params["encoder"]), step, kept())
                logging.info("step %d | k-NN monitor: accuracy %.3f, macro-F1 %.3f", step, knn["knn_accuracy"],
                             knn["knn_macro_f1"])
                writer.write(step, knn)
            if save:
                checkpointing.save(manager, step, state, data_iter.get_state(), meta, force=preempted)
            if preempted:
                manager.wait_until_finished()
                raise Preempted(f"Preempted at step {step}: checkpoint saved in {ckpt_dir}; rerun the same "
                                "command to resume.")
    finally:
        trace.close()
        preemption.close()
        manager.wait_until_finished()
        manager.close()
        writer.close()

    # ---- export the trained encoder (a teacher for later runs, and the evaluation's input).
    last_batch = next(data_iter) if probe is None else probe
    export_checked(trainer, state.params["encoder"], last_batch, workdir / ENCODER_DIR, int(state.step))
    if trainer.source.state_is_encoder:  # I-JEPA's EMA encoder: the one its paper evaluates, and a teacher
        export_checked(trainer, state.targets, last_batch, workdir / EMA_ENCODER_DIR, int(state.step),
                       source=dict(run=str(workdir), step=int(state.step), ema_of="encoder"))
    if is_main:
        logging.info("Done: encoder in %s, loss curve in %s", workdir / ENCODER_DIR, write_loss_curve(workdir))
    return last or last_values(workdir)  # a rerun of a finished run trains nothing: what was logged last
