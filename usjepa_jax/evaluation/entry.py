"""The one entry point of evaluation, ``evaluate(config, ...)``, which ``python -m usjepa_jax.evaluate`` wraps:
one encoder of a training run (``evaluate_run``: its results merged into ``RUN/eval/results.json``), or several
encoders on several tasks into one results table (``suite.evaluate_table``). The command's docstring says what
each writes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import ml_collections
from absl import logging

from usjepa_jax import layout, run_log, storage
from usjepa_jax.errors import UserError
from usjepa_jax.evaluation.config import validate_eval_config
from usjepa_jax.evaluation.encoder_specs import entry_name, run_encoder
from usjepa_jax.evaluation.labelled import default_labelled_config
from usjepa_jax.evaluation.runner import by_task, run_evaluators
from usjepa_jax.evaluation.suite import evaluate_table

RESULTS_FILE = "results.json"


def table_dir(workdir: str | None, out: str | None) -> Path:
    """Where table mode writes: ``out``, else ``WORKDIR/eval/table``."""
    if out is None and not workdir:
        raise UserError("--out is required without --workdir.")
    return Path(out) if out else Path(workdir) / layout.EVAL_DIR / "table"


def evaluate_run(config: ml_collections.ConfigDict, workdir: str | Path, encoder: str = "student",
                 checkpoint: str = "latest", data=None) -> dict[str, float]:
    """Run ``config.evals`` on one encoder of the run; merge the results into ``RUN/eval/results.json``.

    Returns ``{task/evaluator/metric: value}`` (``speckle_invariance/metric`` without a task); ``data``:
    pre-rendered tasks (``evaluation.runner.render_tasks``) shared between encoders."""
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
                   "content_hash": model.content_hash, "evals": config.evals.to_dict(),
                   "seconds": time.perf_counter() - t}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved, indent=2, default=float))
    step = int(checkpoint) if checkpoint.isdigit() else config.optim.total_steps if encoder == "student" else 0
    run_log.write_scalars(out_dir, step, results)  # tensorboard --logdir RUN shows them as the run eval/<entry>
    logging.info("Results in %s", path)
    return results


def evaluate(config: ml_collections.ConfigDict, *, workdir: str | None = None, encoder: str = "student",
             checkpoint: str = "latest", encoders: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
             out: str | None = None, cache_dir: str | None = None, strict: bool = False,
             log: Callable[[str], None] = logging.info) -> dict:
    """Run mode (no ``encoders``, no ``tasks``): ``evaluate_run`` of ``workdir``'s ``encoder``/``checkpoint``,
    returns ``{metric: value}``. Table mode: ``suite.evaluate_table`` of ``encoders`` x ``tasks`` (defaults: the
    run's student, or a random encoder without a run; ``config.evals.tasks``) into ``out`` (default
    ``WORKDIR/eval/table``), returns ``{encoder: {task: {metric: value}}}``. ``strict``: an unreadable input file
    of a labelled task is an error instead of being skipped. Bad arguments raise ``UserError`` before any
    compute."""
    if "evals" not in config:
        raise UserError("The config has no `evals` section (usjepa_jax.evaluation.config.default_eval_config()).")
    validate_eval_config(config.evals)
    if strict:
        config = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy
        config.evals.labelled = config.evals.get("labelled", None) or default_labelled_config()
        config.evals.labelled.on_error = "raise"
    if encoders or tasks:
        out = table_dir(workdir, out)
        encoders = encoders or (["student"] if workdir else ["random"])
        tasks = tasks or [t.strip() for t in str(config.evals.get("tasks", "lesion")).split(",") if t.strip()]
        return evaluate_table(config, encoders, tasks, out, workdir=workdir, cache_dir=cache_dir, log=log)
    if not workdir:
        raise UserError("--workdir is required (or table mode: --encoders / --tasks).")
    if checkpoint not in ("latest", "best") and not checkpoint.isdigit():
        raise UserError(f"--checkpoint={checkpoint!r}: expected latest, best or a step number.")
    storage.check_backends([workdir, config.teacher.checkpoint])  # before any compute, naming the extra
    return evaluate_run(config, workdir, encoder, checkpoint)
