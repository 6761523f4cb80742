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
The logic is ``evaluation/entry.py``'s ``evaluate`` (which notebooks and experiments call); this is its command line.
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

from absl import app, flags
from ml_collections import config_flags

from usjepa_jax import cli
from usjepa_jax import config as config_lib
from usjepa_jax.evaluation import entry
from usjepa_jax.evaluation.encoder_specs import RUN_ENCODERS
from usjepa_jax.evaluation.table import TABLE_MD

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py[:arg]); default with --workdir: the run's own "
    "RUN/config.json (--config.KEY=VALUE overrides need --config).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's directory.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "latest | best | a step number (student only).")
_ENCODER = flags.DEFINE_enum("encoder", "student", list(RUN_ENCODERS), "Which encoder to evaluate (ema: an "
                             "I-JEPA run's EMA encoder).")
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


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value or (config_lib.run_config(_WORKDIR.value) if _WORKDIR.value else None)
    if config is None:  # without --config: the config the run saved (RUN/config.json)
        raise app.UsageError("--config is required without --workdir.")
    results = entry.evaluate(config, workdir=_WORKDIR.value, encoder=_ENCODER.value, checkpoint=_CHECKPOINT.value,
                             encoders=_ENCODERS.value, tasks=_TASKS.value, out=_OUT.value, cache_dir=_CACHE_DIR.value,
                             strict=_STRICT.value)
    if _ENCODERS.value or _TASKS.value:
        out = entry.table_dir(_WORKDIR.value, _OUT.value)
        print((out / TABLE_MD).read_text())
        print(f"Results table: {out / TABLE_MD} (+ .json, .png)")
        return
    for key, value in results.items():
        if not key.endswith(("_std", "seconds")):
            print(f"{key:48s} {value:.4f}")


if __name__ == "__main__":
    cli.run(main)
