"""Where the predictor's regression targets come from: one small class per source, one interface.

The trainer has a single path for every method (``train.make_loss_fn``): the student encodes the context, the
predictor predicts each target block, and a ``TargetSource`` says what it should have predicted::

    full = source.targets(state, frozen, batch)        # [B, N, D]: per patch of the full image, no gradient
    loss = source.loss(pred, gather(full, target_idx), target_valid)    # = mean of per_patch_loss(pred, prepare(.))
    state, metrics = source.update(state, encoder_params, step)       # after the optimizer step

A source has
- ``width``: ``D``, the predictor's output width;
- ``state`` (``init_state``): what it carries in the train state between steps, checkpointed with it (the EMA
  copy of the student; ``None`` for the others);
- ``frozen_params``: host parameters placed once on the devices (sharded by the same rules as the train state)
  and passed to every step as their own argument: never differentiated, never donated, never checkpointed (a
  frozen teacher; ``None`` for the others). ``provenance`` (path and content hash) goes into checkpoints instead;
- ``batch_keys`` / ``pipeline_transform(split)``: extra per-example inputs the data pipeline must attach (the
  cached targets).

The sources (``config.method`` picks one through ``config.METHODS``, where each method is registered with its
config keys, their checks and its stage 1):
- ``FrozenTeacher`` (``usjepa``): a frozen encoder's patch embeddings (US-JEPA, SALT stage 2);
- ``CachedTeacher`` (``usjepa`` with ``teacher.cache``): the same embeddings, precomputed once per image
  (``encoders/cache.py``); the teacher never runs and its weights never reach a device;
- ``EMATeacher`` (``ijepa``): an exponential moving average of the student's encoder (I-JEPA);
- ``Pixels`` (``pixel``): the per-patch (normalised) pixels, with an MSE loss (MAE-style, SALT stage 1).

Adding a method: one module that subclasses ``TargetSource``, implements ``targets`` (and ``width``; ``prepare``,
``per_patch_loss``, ``update`` and state when they differ), gives it a ``from_config`` and registers it with its
own config keys and checks (``config.register_method``), and a config file that imports that module:
docs/adding_a_method.md.
"""

from __future__ import annotations

import importlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from usjepa_jax import config as config_lib
from usjepa_jax import objectives
from usjepa_jax.encoders import FrozenEncoder, load_encoder, normalize_images
from usjepa_jax.encoders import cache as teacher_cache
from usjepa_jax.models.vit import VisionTransformer


class TargetSource:
    """The interface (and the defaults: stateless, nothing frozen, the latent loss of ``config.loss``)."""

    width: int
    frozen_params: Any = None
    batch_keys: tuple[str, ...] = ()
    state_is_encoder = False  # the state is an encoder's parameters (the EMA copy): exported at the end

    def __init__(self, loss_config: ml_collections.ConfigDict):
        self.loss_kind, self.normalize_targets = loss_config.kind, loss_config.normalize_targets
        self.standardize_targets = loss_config.standardize_targets

    def init_state(self, encoder_params: Any) -> Any:
        """The source's part of a fresh train state (``TrainState.targets``)."""
        return None

    def targets(self, state: Any, frozen: Any, batch: dict[str, jax.Array]) -> jax.Array:
        """``[B, N, D]`` targets of every patch of the batch's images (``N`` = the student's patch grid)."""
        raise NotImplementedError

    def prepare(self, target: jax.Array, valid: jax.Array) -> jax.Array:
        """``target [B, M, T, D]`` (gathered at the target blocks) as the loss compares it: float32, no gradient,
        and whatever pools the batch (``loss.standardize_targets``); runs once on the whole global batch."""
        return objectives.prepare_latent_targets(target, valid, normalize_targets=self.normalize_targets,
                                                 standardize_targets=self.standardize_targets)

    def per_patch_loss(self, pred: jax.Array, target: jax.Array) -> jax.Array:
        """``pred [B, M, T, D]`` against a ``prepare``d target -> ``[B, M, T]`` (the loss of each patch)."""
        return objectives.elementwise_loss(pred.astype(jnp.float32), target, self.loss_kind).mean(axis=-1)

    def loss(self, pred: jax.Array, target: jax.Array, valid: jax.Array) -> jax.Array:
        """``pred``/``target`` ``[B, M, T, D]`` at the target blocks, ``valid`` ``[B, M, T]`` -> scalar: the mean
        over blocks of each block's mean over its valid patches."""
        return objectives.masked_block_mean(self.per_patch_loss(pred, self.prepare(target, valid)), valid)

    def update(self, state: Any, encoder_params: Any, step: jax.Array) -> tuple[Any, dict[str, jax.Array]]:
        """The source's state after an optimizer step (``encoder_params``: the updated student), and metrics."""
        return state, {}

    def pipeline_transform(self, split: str) -> Any:
        """A grain transform attaching ``batch_keys`` to each example of ``split`` (None: nothing to attach)."""
        return None

    def provenance(self) -> dict[str, Any]:
        """What checkpoints record of the targets; resuming with another ``teacher_hash`` is refused."""
        return dict(teacher_path=None, teacher_hash=None, teacher_cache=None)

    def check_student(self, patch_size: int) -> None:
        """Raise ValueError if the targets do not live on the student's patch grid."""


def _check_patch(where: str, teacher_patch: int, student_patch: int) -> None:
    if teacher_patch != student_patch:  # targets are gathered on the student's patch grid
        raise ValueError(f"Teacher {where} has patch size {teacher_patch}, the student {student_patch}: their "
                         "patch grids must match.")


class FrozenTeacher(TargetSource):
    """A frozen encoder's patch embeddings of the full image (US-JEPA): the teacher runs every step."""

    def __init__(self, teacher: FrozenEncoder, loss_config: ml_collections.ConfigDict):
        super().__init__(loss_config)
        self.teacher, self.width, self.frozen_params = teacher, teacher.width, teacher.params

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, encoder: VisionTransformer) -> TargetSource:
        if config.teacher.cache:
            return CachedTeacher(teacher_cache.open_for_training(config), config.loss)
        if not config.teacher.checkpoint:
            raise ValueError("method='usjepa' needs config.teacher.checkpoint (train.train_and_evaluate trains the "
                             "stage-1 teacher first when it is empty) or config.teacher.cache.")
        teacher = load_encoder(config.teacher.checkpoint, dtype=jnp.dtype(config.model.dtype),
                               image_size=config.data.image_size)
        return cls(teacher, config.loss)

    def targets(self, state, frozen, batch):
        return self.teacher.embed(frozen, batch["image"])

    def provenance(self):
        return dict(teacher_path=self.teacher.path, teacher_hash=self.teacher.content_hash, teacher_cache=None)

    def check_student(self, patch_size):
        _check_patch(self.teacher.path, self.teacher.module.patch_size, patch_size)


class CachedTeacher(TargetSource):
    """A frozen teacher's embeddings read from a cache (bfloat16 ``[N, D]`` per image, attached by the pipeline)."""

    batch_keys = (teacher_cache.KEY,)

    def __init__(self, cache: teacher_cache.TeacherCache, loss_config: ml_collections.ConfigDict):
        super().__init__(loss_config)
        self.cache, self.width = cache, cache.width
        self.normalize_targets = self.normalize_targets and not cache.normalized  # --normalize: stored normalised

    def targets(self, state, frozen, batch):
        return batch[teacher_cache.KEY]

    def pipeline_transform(self, split):
        return self.cache.targets(split)

    def provenance(self):
        return dict(teacher_path=self.cache.path, teacher_hash=self.cache.content_hash,
                    teacher_cache=self.cache.directory)

    def check_student(self, patch_size):
        _check_patch(self.cache.path, self.cache.patch_size, patch_size)


class EMATeacher(TargetSource):
    """An exponential moving average of the student's encoder (I-JEPA); momentum linear ``ema.start -> ema.end``
    over training. Its parameters are the state: checkpointed with the student, no gradient, no optimizer; at the
    end the trainer exports them as an encoder of their own (``RUN/encoder_ema``)."""

    state_is_encoder = True

    def __init__(self, encoder: VisionTransformer, config: ml_collections.ConfigDict):
        super().__init__(config.loss)
        self.encoder, self.width = encoder, encoder.width
        self.mean, self.std = config.data.mean, config.data.std
        self.total_steps, self.start, self.end = config.optim.total_steps, config.ema.start, config.ema.end

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, encoder: VisionTransformer) -> TargetSource:
        return cls(encoder, config)

    def init_state(self, encoder_params):
        return encoder_params

    def targets(self, state, frozen, batch):
        images = normalize_images(batch["image"], self.mean, self.std, self.encoder.dtype)
        return self.encoder.apply({"params": state}, images)[0]

    def update(self, state, encoder_params, step):
        momentum = objectives.ema_momentum(step, self.total_steps, self.start, self.end)
        return objectives.ema_update(state, encoder_params, momentum), {"ema_momentum": momentum}


class Pixels(TargetSource):
    """The image's own pixels per patch (``p * p`` grayscale values), per-patch normalised when
    ``loss.normalize_pixels`` (MAE), or what ``loss.pixel_target`` makes of them (low-passed pixels, HOG;
    ``objectives.pixel_targets``); the loss is the MSE."""

    def __init__(self, patch_size: int, config: ml_collections.ConfigDict, dtype: Any = jnp.float32):
        super().__init__(config.loss)
        self.kind, self.lowpass_sigma = config.loss.pixel_target, config.loss.lowpass_sigma
        self.patch_size, self.width = patch_size, objectives.pixel_target_width(self.kind, patch_size)
        self.normalize_pixels, self.mean, self.std, self.dtype = (config.loss.normalize_pixels, config.data.mean,
                                                                  config.data.std, dtype)

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, encoder: VisionTransformer) -> TargetSource:
        return cls(encoder.patch_size, config, encoder.dtype)

    def targets(self, state, frozen, batch):
        images = normalize_images(batch["image"], self.mean, self.std, self.dtype)  # what the student sees
        return objectives.pixel_targets(images, self.patch_size, normalize_pixels=self.normalize_pixels,
                                        kind=self.kind, lowpass_sigma=self.lowpass_sigma)

    def prepare(self, target, valid):
        return jax.lax.stop_gradient(target.astype(jnp.float32))

    def per_patch_loss(self, pred, target):  # MSE
        return objectives.elementwise_loss(pred.astype(jnp.float32), target, "l2").mean(axis=-1)


def source_class(method: str) -> type[TargetSource]:
    """The ``TargetSource`` class registered for ``method`` (``config.register_method``), imported if named."""
    source = config_lib.METHODS[method].source
    if isinstance(source, str):
        module, _, name = source.partition(":")
        source = getattr(importlib.import_module(module), name)
    return source


def from_config(config: ml_collections.ConfigDict, encoder: VisionTransformer) -> TargetSource:
    """The target source of ``config.method`` for the student ``encoder`` (loads the teacher or opens its cache)."""
    return source_class(config.method).from_config(config, encoder)
