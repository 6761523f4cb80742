"""Evaluate frozen encoders: one run's (``--workdir``, ``--encoder``), or several encoders on several tasks
into one results table (``--encoders``, ``--tasks``).

    python -m usjepa_jax.evaluate --workdir=/tmp/usjepa_base        # the config the run saved (RUN/config.json)
    python -m usjepa_jax.evaluate --config=configs/base.py --workdir=/tmp/usjepa_base
    python -m usjepa_jax.evaluate --config=configs/base.py --workdir=/tmp/usjepa_base --encoder=teacher
    python -m usjepa_jax.evaluate --config=configs/base.py --workdir=/tmp/usjepa_base --encoder=random
    python -m usjepa_jax.evaluate --config=configs/base.py --workdir=/tmp/usjepa_base --checkpoint=200 \\
        --config.evals.evaluators=linear_probe,knn

``--encoder``: ``student`` (the run's encoder), ``teacher`` (its frozen teacher: ``config.teacher.checkpoint`` or
the stage-1 ``RUN/teacher/encoder``), ``random`` (a random init of ``config.model``, the floor).
``--checkpoint`` (student only): ``latest`` = the exported final encoder ``RUN/encoder``; ``best`` = the lowest
validation-loss encoder ``RUN/encoder_best``; a step number = the encoder restored from ``RUN/checkpoints/STEP``.

Every evaluator runs on every task of ``config.evals.tasks`` (the simulated task suite, evaluation/tasks.py),
speckle invariance once. Writes ``RUN/eval/results.json`` (one entry per evaluated encoder, e.g. ``student:latest``,
``teacher``, ``random``; entries of other encoders are kept; its ``metrics`` keyed by task, task-free metrics under
``all``) and figures in ``RUN/eval/<entry>/<task>/``: ``masks.png`` (inputs with a context/target sample),
``pca_features.png``, ``probe_curves.png``, ``few_shot.png``, ``robustness.png``.

The table (``evaluation/suite.py`` says what the specs mean; ``evaluation/labelled.py`` the task layouts)::

    python -m usjepa_jax.evaluate --config=configs/base.py --workdir=/tmp/usjepa_base \
        --encoders=student,teacher,random,timm=/ckpt/vit_small.safetensors@64 \
        --tasks=lesion,busi=/data/busi_v1,/data/thyroid_folders,/data/echo.csv --out=/tmp/eval_table

writes ``OUT/results.md`` (rows encoders, columns tasks: linear-probe macro-F1 mean +- std over the probe seeds;
few-shot, k-NN and robustness as relative drop below), ``OUT/results.json`` and ``OUT/results.png``. Features
are extracted once per (encoder, task split, corruption) into ``OUT/features`` and reused; real tasks are
preprocessed once per input size into ``--cache_dir`` (default ``OUT/cache``). An input file of a labelled task
that does not read (or does not exist) is skipped with a warning and listed in ``results.md`` and
``results.json``; ``--strict`` makes it an error. Errors end as ``cli.py`` says (exit 2: one line naming the value).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from usjepa_jax import cli, layout, run_log, storage
from usjepa_jax import config as config_lib

RESULTS_FILE = "results.json"

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py[:arg]); default with --workdir: the run's own "
    "RUN/config.json (--config.KEY=VALUE overrides need --config).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's directory.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "latest | best | a step number (student only).")
_ENCODER = flags.DEFINE_enum("encoder", "student", ["student", "teacher", "random"], "Which encoder to evaluate.")
_ENCODERS = flags.DEFINE_list("encoders", None, "Table mode: encoders, comma separated: [NAME=]student[:best|STEP]"
                              ", teacher, random, or a path (exported encoder, run workdir, checkpoint file); "
                              "@SIZE sets the input size.")
_TASKS = flags.DEFINE_list("tasks", None, "Table mode: tasks, comma separated: a simulated task name, or "
                           "[NAME=]PATH of a labelled task (UltraBench folder, class folders, CSV/JSON list).")
_OUT = flags.DEFINE_string("out", None, "Table mode: output folder (default WORKDIR/eval/table).")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Table mode: preprocessed real tasks (default OUT/cache).")
_STRICT = flags.DEFINE_bool("strict", False, "Table mode: an unreadable or missing input file of a labelled task "
                            "is an error (exit 2) instead of being skipped (skipped files are listed in results.md "
                            "and results.json either way).")


def entry_name(encoder: str, checkpoint: str) -> str:
    if encoder != "student":
        return encoder
    return f"student:{checkpoint if checkpoint in ('latest', 'best') else f'step_{int(checkpoint)}'}"


def encoder_path(config: ml_collections.ConfigDict, workdir: str | Path, encoder: str = "student",
                 checkpoint: str = "latest") -> Path:
    """Where the run's ``encoder``/``checkpoint`` lives (see the module docstring); loaded by ``load_encoder``."""
    workdir = storage.path(workdir)
    if encoder == "teacher":
        return storage.path(config.teacher.checkpoint or workdir / layout.TEACHER_DIR / layout.ENCODER_DIR)
    if checkpoint not in ("latest", "best"):
        return workdir / layout.CHECKPOINTS_DIR / str(int(checkpoint))
    path = workdir / (layout.ENCODER_DIR if checkpoint == "latest" else layout.BEST_ENCODER_DIR)
    if not (path / layout.MODEL_FILE).is_file():
        raise FileNotFoundError(f"No exported encoder in {path}" + (
            " (encoder_best/ is written only when the run computes a validation loss: eval_every > 0 and "
            "data.num_val >= batch_size)" if checkpoint == "best" else " (has the run finished?)"))
    return path


def run_encoder(config: ml_collections.ConfigDict, workdir: str | Path, encoder: str = "student",
                checkpoint: str = "latest"):
    """The ``FrozenEncoder`` to evaluate: ``encoders.load_encoder`` of ``encoder_path``, or a random init."""
    import jax.numpy as jnp

    from usjepa_jax.encoders import load_encoder
    from usjepa_jax.evaluation.features import random_encoder

    size = config.data.image_size
    if encoder == "random":
        return random_encoder(config.model, size, mean=config.data.mean, std=config.data.std, seed=config.seed)
    path = encoder_path(config, workdir, encoder, checkpoint)
    dtype = jnp.float32 if encoder == "teacher" else jnp.dtype(config.model.dtype)
    return load_encoder(path, image_size=size, dtype=dtype)


def evaluate_run(config: ml_collections.ConfigDict, workdir: str | Path, encoder: str = "student",
                 checkpoint: str = "latest", data=None) -> dict[str, float]:
    """Run ``config.evals`` on one encoder of the run; merge the results into ``RUN/eval/results.json``.

    Returns ``{task/evaluator/metric: value}`` (``speckle_invariance/metric`` without a task); ``data``:
    pre-rendered tasks (``evaluation.runner.render_tasks``) shared between encoders."""
    from usjepa_jax.evaluation import run_evaluators
    from usjepa_jax.evaluation.runner import by_task

    workdir = storage.path(workdir)
    name = entry_name(encoder, checkpoint)
    model = run_encoder(config, workdir, encoder, checkpoint)
    out_dir = workdir / layout.EVAL_DIR / name.replace(":", "_")
    logging.info("Evaluating %s (%s) -> %s", name, model.path, out_dir)
    t = time.perf_counter()
    results, figures = run_evaluators(model, config, data=data, out_dir=out_dir, log=logging.info)
    path = workdir / layout.EVAL_DIR / RESULTS_FILE
    saved = json.loads(path.read_text()) if path.exists() else {}
    saved[name] = {"metrics": by_task(results), "figures": figures, "encoder_path": str(model.path),
                       "content_hash": model.content_hash, "evals": config.evals.to_dict(), "seconds": time.perf_counter() - t}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved, indent=2, default=float))
    step = int(checkpoint) if checkpoint.isdigit() else config.optim.total_steps if encoder == "student" else 0
    run_log.write_scalars(out_dir, step, results)  # tensorboard --logdir RUN shows them as the run eval/<entry>
    logging.info("Results in %s", path)
    return results


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value or (config_lib.run_config(_WORKDIR.value) if _WORKDIR.value else None)
    if config is None:  # without --config: the config the run saved (RUN/config.json)
        raise app.UsageError("--config is required without --workdir.")
    from usjepa_jax.evaluation import validate_eval_config

    if "evals" not in config:
        raise app.UsageError("The config has no `evals` section (usjepa_jax.evaluation.default_eval_config()).")
    validate_eval_config(config.evals)
    if _STRICT.value:
        from usjepa_jax.evaluation.labelled import default_labelled_config

        config = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy
        config.evals.labelled = config.evals.get("labelled", None) or default_labelled_config()
        config.evals.labelled.on_error = "raise"
    if _ENCODERS.value or _TASKS.value:
        return table_main(config)
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required (or table mode: --encoders / --tasks).")
    checkpoint = _CHECKPOINT.value
    if checkpoint not in ("latest", "best") and not checkpoint.isdigit():
        raise app.UsageError(f"--checkpoint={checkpoint!r}: expected latest, best or a step number.")
    storage.check_backends([_WORKDIR.value, config.teacher.checkpoint])  # before any compute, naming the extra
    results = evaluate_run(config, _WORKDIR.value, _ENCODER.value, checkpoint)
    for key, value in results.items():
        if not key.endswith(("_std", "seconds")):
            print(f"{key:48s} {value:.4f}")


def table_main(config: ml_collections.ConfigDict) -> None:
    from usjepa_jax.evaluation.suite import evaluate_table
    from usjepa_jax.evaluation.table import TABLE_MD

    workdir = _WORKDIR.value
    out = _OUT.value or (str(Path(workdir) / layout.EVAL_DIR / "table") if workdir else None)
    if out is None:
        raise app.UsageError("--out is required without --workdir.")
    encoders = _ENCODERS.value or (["student"] if workdir else ["random"])
    tasks = _TASKS.value or [t.strip() for t in str(config.evals.get("tasks", "lesion")).split(",") if t.strip()]
    evaluate_table(config, encoders, tasks, out, workdir=workdir, cache_dir=_CACHE_DIR.value, log=logging.info,
                   run_loader=run_encoder)
    print((Path(out) / TABLE_MD).read_text())
    print(f"Results table: {Path(out) / TABLE_MD} (+ .json, .png)")


if __name__ == "__main__":
    cli.run(main)
