"""Which encoder to evaluate: a training run's own (``student``, ``student:best``, ``student:STEP``, ``teacher``,
``ema``, ``random``) or any checkpoint path, parsed from the command line's ``[NAME=]WHAT[@SIZE]`` (``EncoderSpec``) and
loaded as a ``FrozenEncoder`` (``run_encoder``, ``load_encoder_spec``).

A run's encoders: ``student`` is its exported final encoder ``RUN/encoder`` (``latest``), its lowest
validation-loss encoder ``RUN/encoder_best`` (``best``) or the encoder restored from ``RUN/checkpoints/STEP``;
``teacher`` its frozen teacher (``config.teacher.checkpoint`` or the stage-1 ``RUN/teacher/encoder``); ``ema`` the
EMA copy of the student of an I-JEPA run (``RUN/encoder_ema``); ``random`` a random init of ``config.model`` (the
floor).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax.numpy as jnp
import ml_collections

from usjepa_jax import config as config_lib, layout, storage
from usjepa_jax.encoders import FrozenEncoder, load_encoder
from usjepa_jax.evaluation.features import random_encoder

RUN_ENCODERS = ("student", "teacher", "ema", "random")


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    name: str
    what: str  # student | teacher | ema | random | a path
    checkpoint: str = "latest"  # student: latest | best | STEP
    size: int | None = None

    @classmethod
    def parse(cls, spec: str) -> EncoderSpec:
        """``[NAME=]WHAT[@SIZE]`` (see ``suite.py``); a bad spec fails here, naming it, before any compute."""
        text = spec.strip()
        size = None
        head, at, tail = text.rpartition("@")
        if at and tail.isdigit():
            text, size = head, int(tail)
        name, eq, what = text.partition("=")
        if not eq or "/" in name:
            name, what = "", text
        if not what:
            raise ValueError(f"encoder {spec!r}: empty (expected student[:best|STEP], teacher, random or a path)")
        base, colon, checkpoint = what.partition(":")
        if base in RUN_ENCODERS:
            if base != "student" and colon:
                raise ValueError(f"encoder {spec!r}: only the student takes :latest / :best / :STEP")
            checkpoint = checkpoint or "latest"
            if checkpoint not in ("latest", "best") and not checkpoint.isdigit():
                raise ValueError(f"encoder {spec!r}: {checkpoint!r} is not latest, best or a step number")
            default = base if base != "student" else f"student:{checkpoint}"
            return cls(name or default, base, checkpoint, size)
        path = Path(what).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"encoder {spec!r}: {path} does not exist (expected student[:best|STEP], "
                                    "teacher, random, an exported encoder, a run's workdir or a checkpoint file)")
        return cls(name or (path.stem if path.is_file() else path.name), str(path.resolve()), "latest", size)


def entry_name(encoder: str, checkpoint: str) -> str:
    if encoder != "student":
        return encoder
    return f"student:{checkpoint if checkpoint in ('latest', 'best') else f'step_{int(checkpoint)}'}"


def encoder_path(config: ml_collections.ConfigDict, workdir: str | Path, encoder: str = "student",
                 checkpoint: str = "latest") -> Path:
    """Where the run's ``encoder``/``checkpoint`` lives (see the module docstring); loaded by ``load_encoder``."""
    workdir = storage.path(workdir)
    if encoder == "teacher":
        return storage.path(config.teacher.checkpoint
                            or workdir / layout.TEACHER_DIR / config_lib.stage1_teacher_encoder(config))
    if encoder == "student" and checkpoint not in ("latest", "best"):
        return workdir / layout.CHECKPOINTS_DIR / str(int(checkpoint))
    path = workdir / ({"ema": layout.EMA_ENCODER_DIR}.get(encoder) or
                      (layout.ENCODER_DIR if checkpoint == "latest" else layout.BEST_ENCODER_DIR))
    if not (path / layout.MODEL_FILE).is_file():
        raise FileNotFoundError(f"No exported encoder in {path}" + (
            " (encoder_best/ is written only when the run computes a validation loss: eval_every > 0 and "
            "data.num_val >= batch_size)" if checkpoint == "best" else
            " (only an I-JEPA run has an EMA encoder; has the run finished?)" if encoder == "ema" else
            " (has the run finished?)"))
    return path


def run_encoder(config: ml_collections.ConfigDict, workdir: str | Path, encoder: str = "student",
                checkpoint: str = "latest"):
    """The ``FrozenEncoder`` to evaluate: ``encoders.load_encoder`` of ``encoder_path``, or a random init."""
    size = config.data.image_size
    if encoder == "random":
        return random_encoder(config.model, size, mean=config.data.mean, std=config.data.std, seed=config.seed)
    path = encoder_path(config, workdir, encoder, checkpoint)
    dtype = jnp.float32 if encoder == "teacher" else jnp.dtype(config.model.dtype)
    return load_encoder(path, image_size=size, dtype=dtype)


def load_encoder_spec(spec: EncoderSpec, config: ml_collections.ConfigDict, workdir: str | Path | None,
                      size: int) -> FrozenEncoder:
    """The frozen encoder of ``spec`` at input ``size``: a path through ``encoders.load_encoder`` (exported
    encoder, run workdir, train checkpoint, imported ViT file); the run's own through ``run_encoder``."""
    if spec.what in RUN_ENCODERS:
        if spec.what != "random" and not workdir:
            raise ValueError(f"encoder {spec.name!r}: {spec.what} needs --workdir (the training run)")
        return run_encoder(with_image_size(config, size), workdir or ".", spec.what, spec.checkpoint)
    return load_encoder(spec.what, image_size=size)


def with_image_size(config: ml_collections.ConfigDict, size: int) -> ml_collections.ConfigDict:
    out = ml_collections.ConfigDict(config.to_dict())
    out.data.image_size = int(size)
    return out




def with_image_size(config: ml_collections.ConfigDict, size: int) -> ml_collections.ConfigDict:
    out = ml_collections.ConfigDict(config.to_dict())
    out.data.image_size = int(size)
    return out
