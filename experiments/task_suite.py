"""The simulated task suite's table: can each task be read from the phantom, the pixels, a random and a trained
encoder? A linear probe (the paper's protocol, evaluation/probe.py, 5 seeds) on four feature sets per task, and
two readouts of the patch tokens (docs/probes.md): the attentive probe (attentive.py) and the dense linear probe
of the tissue map (dense.py, mIoU / Dice).

    python experiments/task_suite.py --out=/tmp/task_suite                                   # oracle, raw, random
    python experiments/task_suite.py --out=/tmp/task_suite --student=/tmp/usjepa_base        # + a trained student
    python experiments/task_suite.py --out=/tmp/task_suite_smoke --config=configs/base.py:smoke   # seconds
    python experiments/task_suite.py --out=/tmp/task_suite --readouts=linear               # the linear probe only

Feature sets (all on the same images of ``simulated_task_data``, at ``config.data.image_size``):
- ``oracle``: the phantom's tissue fractions per 8x8-pixel patch and over the whole image (the segmentation,
  ``baselines.oracle_features``); what the label is made of, so a task whose oracle stays below ``KEEP_THRESHOLD``
  is not well defined and is not kept;
- ``raw pixels``: the model-input image, flattened;
- ``random init``: a random ``config.model`` encoder, mean-pooled patch tokens;
- ``student``: the exported encoder of a training run (``--student=RUN``, ``RUN/encoder``); more encoders as
  ``--student=NAME=PATH`` (repeatable: e.g. ``--student=teacher=RUN/teacher``), one column each.

Token readouts: every column is read the same way from tokens of the same patch grid (``config.model``'s patch;
an encoder's own patch size): the oracle's tokens are its tissue fractions per patch (``dense.patch_targets``),
raw pixels' tokens the pixels of each patch (``features.pixel_tokens``), an encoder's its patch tokens. The oracle
has no attentive cell on tasks whose label is a simulator parameter rather than tissue (``grade``, ``margin``).
The linear probe's raw-pixel column stays the flattened image (the paper's comparison), so only the token readouts
are like for like across columns.

Writes ``OUT/task_suite.md`` (a table per readout, mean ± std over probe seeds), ``OUT/task_suite.json``,
``OUT/task_suite.png`` (bars) and ``OUT/contact_<task>.png`` (one row per class: is the label visible?).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere in the repo

_CONFIG = config_flags.DEFINE_config_file("config", "configs/base.py", "Config: data, model, evals (tasks, sizes).")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_READOUTS = flags.DEFINE_list("readouts", ["linear", "attentive", "dense"],
                              "Which readouts to run: linear (the paper's probe), attentive, dense.")
_STUDENT = flags.DEFINE_multi_string(
    "student", [], "A training run's workdir (its exported final encoder is probed too), or NAME=PATH with any "
    "encoder load_encoder reads (a run, RUN/teacher, an exported or imported checkpoint); repeat for several.")

KEEP_THRESHOLD = 0.9  # an oracle macro-F1 below this: the task is not kept
BASE_COLUMNS = ("oracle", "raw_pixels", "random_init")
LABELS = {"oracle": "oracle (phantom)", "raw_pixels": "raw pixels", "random_init": "random init"}
READOUTS = ("linear", "attentive", "dense")
# Each readout's table: (key in a cell, its metric, the table's title).
TABLES = {"linear": (None, "macro_f1", "linear-probe macro-F1 (mean-pooled tokens)"),
          "attentive": ("attentive", "macro_f1", "attentive-probe macro-F1"),
          "dense": ("dense", "miou", "dense-probe mIoU of the tissue map")}


def named_encoders(specs: list[str]) -> dict[str, str]:
    """``--student`` values -> ``{column: path}``: ``RUN`` is the column ``student``, ``NAME=PATH`` the column NAME."""
    named = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = (name, path) if sep else ("student", spec)
        if not name or not path or name in named or name in BASE_COLUMNS:
            raise app.UsageError(f"--student={spec!r}: expected RUN or NAME=PATH with a new NAME (not one of "
                                 f"{BASE_COLUMNS + tuple(named)}).")
        named[name] = path
    return named


def columns(rows: dict) -> list[str]:
    """The table's columns in the order they were probed (the oracle, pixels, random init, then the encoders)."""
    return [c for c, value in next(iter(rows.values())).items() if isinstance(value, dict)]


def task_rows(config, students: dict[str, str], out: Path, readouts=READOUTS) -> dict:
    """``{task: {column: {macro_f1_mean, macro_f1_std, attentive: {...}, dense: {...}}, ...}}`` and a contact
    sheet per task."""
    import jax.numpy as jnp

    from usjepa_jax.encoders import load_encoder
    from usjepa_jax.evaluation import baselines, dense, plots, tasks
    from usjepa_jax.evaluation.features import FeatureExtractor, pixel_tokens, random_encoder
    from usjepa_jax.evaluation.probe import ProbeConfig
    from usjepa_jax.evaluation.baselines import token_readouts

    cfg, seed = ProbeConfig.from_config(config.evals.probe), config.evals.seed
    encoders = {"random_init": random_encoder(config.model, config.data.image_size, mean=config.data.mean,
                                              std=config.data.std, seed=config.seed)}
    for name, path in students.items():  # a run's workdir loads as its final encoder (RUN/encoder)
        encoders[name] = load_encoder(path, image_size=config.data.image_size, dtype=jnp.dtype(config.model.dtype))
    extractors = {name: FeatureExtractor(e, config.evals.pooling, config.evals.batch_size)
                  for name, e in encoders.items()}
    rows = {}
    for task in tasks.task_list(config.evals):
        t = time.perf_counter()
        data = tasks.simulated_task_data(task, config.data, config.evals)
        plots.save_task_contact_sheet(data, out / f"contact_{task}.png")
        logging.info("task %s: %d/%d/%d images rendered in %.0fs", task, len(data.train), len(data.val),
                     len(data.test), time.perf_counter() - t)
        num_codes = int(max(s.segmentation.max() for s in (data.train, data.val, data.test))) + 1
        featurizers = {"oracle": lambda s: baselines.oracle_features(s, num_codes),
                       "raw_pixels": baselines.raw_pixel_features,
                       **{name: (lambda s, e=e: e(s.image)) for name, e in extractors.items()}}
        patch = encoders["random_init"].module.patch_size  # config.model's patch grid
        token_featurizers = {"oracle": (lambda s: dense.patch_targets(s.segmentation, patch, num_codes), patch),
                             "raw_pixels": (lambda s: pixel_tokens(s.image, patch), patch),
                             **{name: (e.tokens, e.encoder.module.patch_size) for name, e in extractors.items()}}
        rows[task] = {"num_classes": data.num_classes, "class_names": list(data.class_names),
                      "chance": 1.0 / data.num_classes}
        for column, featurize in featurizers.items():
            rows[task][column] = {}
            if "linear" in readouts:
                t = time.perf_counter()
                m = baselines.probe_on(data, featurize, cfg, seed)
                rows[task][column] = {"macro_f1_mean": m["macro_f1_mean"], "macro_f1_std": m["macro_f1_std"],
                                      "seconds": time.perf_counter() - t}
                logging.info("task %s, %s: linear macro-F1 %.3f ± %.3f", task, column, m["macro_f1_mean"],
                             m["macro_f1_std"])
            tokens, token_patch = token_featurizers[column]
            rows[task][column].update(token_readouts(
                data, (lambda s, f=tokens: f(s.image)) if column in extractors else tokens, token_patch, config,
                readouts, oracle=column == "oracle"))
            for name in ("attentive", "dense"):
                if name in rows[task][column]:
                    r = rows[task][column][name]
                    metric = TABLES[name][1]
                    logging.info("task %s, %s: %s %s %.3f ± %.3f (%.1fs)", task, column, name, metric,
                                 r[f"{metric}_mean"], r[f"{metric}_std"], r["seconds"])
        rows[task]["kept"] = rows[task]["oracle"].get("macro_f1_mean", float("nan")) >= KEEP_THRESHOLD
    return rows


def write_table(rows: dict, out: Path, note: str = "") -> Path:
    cols = columns(rows)
    sections = []
    for key, metric, title in TABLES.values():
        cells_of = {task: [_cell(r[c].get(key, {}) if key else r[c], metric) if c in r else "-" for c in cols]
                    for task, r in rows.items()}
        if all(cell == "-" for cells in cells_of.values() for cell in cells):
            continue  # this readout was not run
        head = "| task | classes | chance | " + " | ".join(LABELS.get(c, c) for c in cols) + " | kept (oracle >= 0.9) |"
        lines = [f"## {title}", "", head, "|" + "---|" * (head.count("|") - 1)]
        for task, r in rows.items():
            lines.append(f"| `{task}` | {r['num_classes']} | {r['chance']:.2f} | " + " | ".join(cells_of[task])
                         + f" | {'yes' if r['kept'] else 'no'} |")
        sections.append("\n".join(lines))
    text = ("# Simulated task suite (test split, mean ± std over probe seeds)\n\n"
            + (note + "\n\n" if note else "") + "\n\n".join(sections) + "\n")
    path = out / "task_suite.md"
    path.write_text(text)
    return path


def _cell(metrics: dict, metric: str) -> str:
    if f"{metric}_mean" not in metrics:
        return "-"
    return f"{metrics[f'{metric}_mean']:.3f} ± {metrics[f'{metric}_std']:.3f}"


def write_plot(rows: dict, out: Path) -> Path:
    import matplotlib
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.2 * len(rows) + 4, 4.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    cols = columns(rows)
    width = 0.8 / len(cols)
    x = np.arange(len(rows))
    palette = matplotlib.colormaps["tab10" if len(cols) <= 10 else "tab20"]  # one colour per column, never reused
    for i, c in enumerate(cols):
        ax.bar(x + (i - (len(cols) - 1) / 2) * width, [r.get(c, {}).get("macro_f1_mean", np.nan) for r in rows.values()],
               width, yerr=[r.get(c, {}).get("macro_f1_std", 0) for r in rows.values()], capsize=2, label=LABELS.get(c, c),
               color=palette(i))
    for j, r in enumerate(rows.values()):
        ax.hlines(r["chance"], j - 0.45, j + 0.45, color="k", lw=0.8, ls="--", label="chance" if j == 0 else None)
    ax.set_xticks(x, list(rows))
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("linear-probe macro-F1 (test)")
    ax.legend(fontsize=7, ncols=min(len(cols) + 1, 3), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = out / "task_suite.png"
    fig.savefig(path, dpi=110)
    return path


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    out = Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    students = named_encoders(_STUDENT.value)
    unknown = [r for r in _READOUTS.value if r not in READOUTS]
    if unknown or not _READOUTS.value:
        raise app.UsageError(f"--readouts={','.join(_READOUTS.value)}: expected some of {READOUTS}.")
    rows = task_rows(config, students, out, tuple(_READOUTS.value))
    summary = {"rows": rows, "encoders": students, "image_size": config.data.image_size,
               "num_train": config.evals.num_train, "num_val": config.evals.num_val,
               "num_test": config.evals.num_test, "probe_seeds": config.evals.probe.num_seeds,
               "readouts": list(_READOUTS.value), "attentive": config.evals.attentive.to_dict(),
               "dense": config.evals.dense.to_dict(),
               "seconds": time.perf_counter() - t0}
    (out / "task_suite.json").write_text(json.dumps(summary, indent=2))
    from usjepa_jax.data import framing, speckle_share

    framed = ", ".join(framing.framed_task_names(config.data)) or "none"
    note = (f"{config.data.image_size} px (speckle share {speckle_share.config_speckle_share(config):.2f}; framed "
            f"tasks: {framed}), {config.evals.num_train}/{config.evals.num_val}/{config.evals.num_test} "
            f"train/val/test images per task, {config.evals.probe.num_seeds} probe seeds"
            + "".join(f"; {name}: `{path}`" for name, path in students.items()))
    print(write_table(rows, out, note).read_text())
    logging.info("Done in %.0fs: %s", time.perf_counter() - t0, write_plot(rows, out))


if __name__ == "__main__":
    flags.mark_flags_as_required(["out"])
    app.run(main)
