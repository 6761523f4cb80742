"""What a run writes about itself: one metrics writer, one progress reporter, the loss curve.

``MetricsWriter.write(step, values)`` appends one JSON record to ``WORKDIR/metrics.jsonl`` and the same scalars to
TensorBoard event files in ``WORKDIR`` (``tensorboard --logdir WORKDIR``: a US-JEPA run's stage-1 teacher shows
up as the ``teacher`` run next to it, evaluation results as ``eval/...``), and hands the record to an optional
callback (a notebook's live plot). Only process 0 writes. ``Throughput`` turns step counts into steps/s, images/s
and an ETA for the trainer's log line; ``StepTrace`` is the profiler trace of a run's first steps (``--profile``);
``progress`` is the progress bar (tqdm) of the command-line tools (``encoders cache``, ``data.prepare``, feature
extraction).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from absl import logging
from tqdm import tqdm

from usjepa_jax import storage
from usjepa_jax.layout import LOSS_CURVE_FILE, METRICS_FILE
from usjepa_jax.visualize import add_record, plot_training_curves

OnLog = Callable[[str, dict[str, float]], None]


class MetricsWriter:
    """``write(step, {name: value})`` -> ``metrics.jsonl`` + TensorBoard scalars + ``on_log(workdir, record)``."""

    def __init__(self, workdir: str | Path, on_log: OnLog | None = None, enabled: bool = True):
        self.workdir, self.on_log, self.enabled = str(workdir), on_log, enabled
        self._jsonl = storage.LineLog(storage.path(workdir) / METRICS_FILE) if enabled else None
        self._tb = tensorboard_writer(workdir) if enabled else None

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(v) for k, v in values.items() if k != "step"}}
        self._jsonl.write(json.dumps(record) + "\n")
        for name, value in record.items():
            if name != "step":
                self._tb.add_scalar(name, value, step=record["step"])
        self._tb.flush()
        if self.on_log is not None:
            self.on_log(self.workdir, record)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def tensorboard_writer(logdir: str | Path):
    """TensorBoard's own event-file writer (numpy only, no TensorFlow): ``add_scalar(tag, value, step)``."""
    from tensorboard.summary import Writer  # imported here: the command-line tools that only report progress

    return Writer(str(logdir))


def write_scalars(logdir: str | Path, step: int, values: dict[str, float]) -> None:
    """One set of scalars as TensorBoard events in ``logdir`` (e.g. evaluation results)."""
    writer = tensorboard_writer(logdir)
    for name, value in values.items():
        writer.add_scalar(name, float(value), step=int(step))
    writer.close()


def progress(total: int, desc: str, unit: str, enabled: bool = True) -> tqdm:
    """The progress bar of every long job on the command line: rate, elapsed and ETA, on stderr."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=1.0, disable=not enabled,
                bar_format="{desc} {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%) | {rate_fmt} | ETA {remaining}"
                           "{postfix}")


class Throughput:
    """Steps/s over the last window, images/s, and the ETA from the run's average rate (resumes excluded)."""

    def __init__(self, start_step: int, total_steps: int, batch_size: int):
        self.total, self.batch = total_steps, batch_size
        self.run_start = self.window_start = time.perf_counter()
        self.run_start_step = self.window_step = start_step

    def __call__(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        steps_per_s = (step - self.window_step) / max(now - self.window_start, 1e-9)
        overall = (step - self.run_start_step) / max(now - self.run_start, 1e-9)
        self.window_start, self.window_step = now, step
        return dict(steps_per_s=steps_per_s, images_per_s=steps_per_s * self.batch,
                    eta_s=(self.total - step) / max(overall, 1e-9))


class StepTrace:
    """A jax.profiler trace of ``steps`` steps from ``first`` on (its compilation included: it is part of the run)
    into ``logdir`` (TensorBoard's profile plugin, Perfetto); ``steps = 0`` is off. Around each step:
    ``before(step)``, the step, ``after(step, outputs)``; ``close()`` in a ``finally``."""

    def __init__(self, logdir: str | Path, first: int, steps: int):
        self.logdir, self.first, self.last, self.tracing = str(logdir), first, first + steps - 1, False
        self.jax = None
        if steps > 0:
            import jax  # here: the command-line tools that only report progress need no jax

            self.jax = jax

    def before(self, step: int) -> None:
        if self.jax is not None and step == self.first:
            self.jax.profiler.start_trace(self.logdir)
            self.tracing = True

    def after(self, step: int, outputs) -> None:
        if self.tracing and step == self.last:
            self.jax.block_until_ready(outputs)
            self.close()
            logging.info("Profile of steps %d-%d in %s", self.first, step, self.logdir)

    def close(self) -> None:
        if self.tracing:
            self.jax.profiler.stop_trace()
            self.tracing = False


def format_eta(seconds: float) -> str:
    return tqdm.format_interval(max(seconds, 0))


def read_metrics(workdir: str | Path) -> dict[str, dict[int, float]]:
    """``metrics.jsonl`` as ``{metric: {step: value}}`` (a resumed run may rewrite steps: the last value wins)."""
    path = storage.path(workdir) / METRICS_FILE
    series: dict[str, dict[int, float]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                add_record(series, json.loads(line))
    return series


def last_values(workdir: str | Path) -> dict[str, float]:
    """The last logged value of every metric (what a rerun of a finished run reports)."""
    return {key: values[max(values)] for key, values in read_metrics(workdir).items()}


def write_loss_curve(workdir: str | Path) -> Path | None:
    """Plot train/validation loss (and the k-NN monitor's accuracy, when on) to ``loss_curve.png``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # not pyplot: no global backend switch inside a notebook

    workdir = storage.path(workdir)
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
