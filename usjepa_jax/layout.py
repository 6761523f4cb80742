"""The names inside a run's workdir, in one place (the trainer writes them; evaluation, the encoder CLI and the
tests read them)::

    WORKDIR/
      config.json          the resolved config of the run (``evaluate`` reads it)
      checkpoints/STEP/    orbax: train state + data-iterator position + metadata (checkpointing.py); a step
                           that does not restore is moved aside to STEP.damaged on resume, never deleted
      metrics.jsonl        one JSON record per log line; TensorBoard event files next to it
      loss_curve.png
      encoder/             the final student, an exported encoder (``model.json`` + ``params/``)
      encoder_best/        the student at the lowest validation loss (only with a validation loss)
      encoder_ema/         the final EMA encoder, I-JEPA only (what its paper evaluates; a frozen teacher)
      teacher/             the stage-1 pixel teacher's own run folder (this same layout), US-JEPA only
      eval/                evaluation results and figures (``python -m usjepa_jax.evaluate``)
      profile/             a jax.profiler trace of the first steps (``--profile=N``), when asked for
"""

CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
ENCODER_DIR = "encoder"
BEST_ENCODER_DIR = "encoder_best"  # the encoder at the lowest validation loss (the one to use downstream)
EMA_ENCODER_DIR = "encoder_ema"  # ijepa: the EMA copy of the student (targets.EMATeacher's state)
TEACHER_DIR = "teacher"
EVAL_DIR = "eval"
PROFILE_DIR = "profile"  # config.profile_steps / main --profile: the jax.profiler trace (TensorBoard, Perfetto)

# Inside an exported encoder directory.
MODEL_FILE = "model.json"
PARAMS_DIR = "params"
