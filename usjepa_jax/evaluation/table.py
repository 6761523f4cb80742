"""The results table of several encoders on several tasks, like the paper's: ``write_table(results, out_dir)``.

``results[encoder][task]`` is the ``{evaluator/metric: value}`` dict of one encoder on one task (what
``run_evaluators`` returns for it). Written to ``out_dir``:

- ``results.md``: the headline table (rows encoders, columns tasks, linear-probe macro-F1 mean +- std over the
  probe seeds), the attentive and dense probes' tables when they were run (``READOUTS``), then few-shot
  macro-F1 per training fraction, k-NN accuracy, and the robustness of the clean probe as the relative macro-F1
  drop ``(clean - corrupted) / clean`` per corruption and severity (one table per task);
  the best encoder of each column in bold;
- ``results.json``: every metric, ``{"encoders": {name: info}, "tasks": {name: info}, "results": {encoder:
  {task: {metric: value}}}}``;
- ``results.png``: probe macro-F1 bars per task (error bars: std over seeds) beside the relative drop by
  severity, averaged over corruptions and tasks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from usjepa_jax.evaluation.plots import figure, save

PROBE = "linear_probe/macro_f1"
TABLE_MD, TABLE_JSON, TABLE_PNG = "results.md", "results.json", "results.png"
# The readouts of the patch tokens (docs/probes.md), each a table like the headline's when it was run.
READOUTS = (("attentive_probe/macro_f1", "## Attentive probe (one cross-attention block, learned query), macro-F1"),
            ("dense_probe/miou", "## Dense linear probe on patch tokens, segmentation mIoU"),
            ("dense_probe/dice", "## Dense linear probe on patch tokens, segmentation Dice"))


def _cell(metrics: dict[str, float] | None, key: str, std: bool = True) -> tuple[float | None, str]:
    if not metrics or f"{key}_mean" not in metrics and key not in metrics:
        return None, "-"
    if key in metrics:
        return metrics[key], f"{metrics[key]:.3f}"
    mean = metrics[f"{key}_mean"]
    text = f"{mean:.3f}"
    if std and f"{key}_std" in metrics:
        text += f" ± {metrics[f'{key}_std']:.3f}"
    return mean, text


def _table(rows: Sequence[str], cols: Sequence[str], cell, best: str = "max") -> list[str]:
    """Markdown lines; ``cell(row, col) -> (value or None, text)``; the best value of each column in bold."""
    values = {(r, c): cell(r, c) for r in rows for c in cols}
    lines = ["| encoder | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    bests = {}
    for c in cols:
        vals = [values[(r, c)][0] for r in rows if values[(r, c)][0] is not None]
        if len(vals) > 1:
            bests[c] = max(vals) if best == "max" else min(vals)
    for r in rows:
        cells = []
        for c in cols:
            v, text = values[(r, c)]
            cells.append(f"**{text}**" if v is not None and c in bests and v == bests[c] else text)
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return lines


def fractions_of(results: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    tags = {m.split("/")[1] for by_task in results.values() for ms in by_task.values() for m in ms
            if m.startswith("few_shot/") and m.endswith("/macro_f1_mean")}
    return sorted(tags, key=lambda t: float(t[:-3]))


def corruption_columns(metrics: dict[str, float]) -> list[tuple[str, int]]:
    out = set()
    for m in metrics:
        hit = re.fullmatch(r"robustness/(\w+)/s(\d)/relative_drop", m)
        if hit and int(hit.group(2)) > 0:
            out.add((hit.group(1), int(hit.group(2))))
    return sorted(out)


def markdown(results: dict[str, dict[str, dict[str, float]]], encoders: Sequence[str], tasks: Sequence[str],
             notes: Sequence[str] = ()) -> str:
    def get(e: str, t: str) -> dict[str, float] | None:
        return results.get(e, {}).get(t)

    lines = ["# Frozen-encoder evaluation", "",
             "Linear probe (paper protocol), macro-F1 mean ± std over seeds; rows encoders, columns tasks.", ""]
    lines += _table(encoders, tasks, lambda e, t: _cell(get(e, t), PROBE))
    fracs = fractions_of(results)
    if fracs:
        lines += ["", f"## Few-shot linear probe, macro-F1 ({' / '.join(f[:-3] + '%' for f in fracs)} of train)",
                  ""]
        lines += _table(encoders, tasks, lambda e, t: (None, " / ".join(
            _cell(get(e, t), f"few_shot/{f}/macro_f1", std=False)[1] for f in fracs)))
    for key, title in READOUTS:
        if any(f"{key}_mean" in (get(e, t) or {}) for e in encoders for t in tasks):
            lines += ["", title, ""]
            lines += _table(encoders, tasks, lambda e, t, key=key: _cell(get(e, t), key))
    if any("knn/accuracy" in (get(e, t) or {}) for e in encoders for t in tasks):
        lines += ["", "## k-NN (cosine, train -> test), accuracy", ""]
        lines += _table(encoders, tasks, lambda e, t: _cell(get(e, t), "knn/accuracy"))
    for t in tasks:
        cols = sorted({c for e in encoders for c in corruption_columns(get(e, t) or {})})
        if not cols:
            continue
        names = [f"{c} s{s}" for c, s in cols]
        lines += ["", f"## Robustness on {t}: relative macro-F1 drop (clean - corrupted) / clean (lower is better)",
                  ""]
        lines += _table(encoders, names, lambda e, n, t=t: _cell(
            get(e, t), f"robustness/{n.split()[0]}/{n.split()[1]}/relative_drop"), best="min")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, dict[str, dict[str, float]]], encoders: Sequence[str], tasks: Sequence[str],
         path: str | Path) -> Path:
    fig = figure(max(6.0, 1.6 * len(tasks) + 5.0), 3.8)
    ax, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    width = 0.8 / max(len(encoders), 1)
    x = np.arange(len(tasks))
    for k, e in enumerate(encoders):
        means = [results.get(e, {}).get(t, {}).get(f"{PROBE}_mean", np.nan) for t in tasks]
        stds = [results.get(e, {}).get(t, {}).get(f"{PROBE}_std", 0.0) for t in tasks]
        ax.bar(x + (k - (len(encoders) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=e)
        drops: dict[int, list[float]] = {}
        for t in tasks:
            m = results.get(e, {}).get(t, {})
            for c, s in corruption_columns(m):
                drops.setdefault(s, []).append(m[f"robustness/{c}/s{s}/relative_drop"])
        if drops:
            sev = sorted(drops)
            ax2.plot([0] + sev, [0.0] + [float(np.mean(drops[s])) for s in sev], marker="o", label=e)
    ax.set_xticks(x, tasks)
    ax.set_ylabel("linear-probe macro-F1")
    ax.set_ylim(0, 1)
    ax.set_title("probe per task (± std over seeds)")
    ax.legend(fontsize=7)
    ax2.set_xlabel("corruption severity")
    ax2.set_ylabel("relative macro-F1 drop")
    ax2.set_title("robustness (mean over corruptions, tasks)")
    if ax2.lines:
        ax2.legend(fontsize=7)
    ax2.axhline(0, color="grey", lw=0.5)
    return save(fig, path)


def write_table(results: dict[str, dict[str, dict[str, float]]], out_dir: str | Path, *,
                encoders: dict[str, Any] | None = None, tasks: dict[str, Any] | None = None,
                notes: Sequence[str] = ()) -> dict[str, str]:
    """Write ``results.md``, ``results.json`` and ``results.png`` to ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    enc_names = list(encoders or results)
    task_names = list(tasks or dict.fromkeys(t for by_task in results.values() for t in by_task))
    (out / TABLE_MD).write_text(markdown(results, enc_names, task_names, notes))
    (out / TABLE_JSON).write_text(json.dumps({"encoders": encoders or {}, "tasks": tasks or {}, "notes": list(notes),
                                              "results": results}, indent=1, default=float))
    plot(results, enc_names, task_names, out / TABLE_PNG)
    return {"markdown": str(out / TABLE_MD), "json": str(out / TABLE_JSON), "plot": str(out / TABLE_PNG)}
