"""Evaluation figures (PNG, matplotlib's object API on the Agg canvas: the global backend is never touched)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from usjepa_jax import storage


def figure(w: float, h: float):
    """A ``w`` x ``h`` inch figure on its own Agg canvas (every figure of evaluation/ and experiments/ starts here)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # here: matplotlib loads only when a figure is drawn

    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig


def save(fig, path) -> Path:
    """Lay out ``fig`` and write it to ``path`` (local or a bucket); returns the path."""
    fig.tight_layout()
    storage.save_figure(fig, path, dpi=100)
    return storage.path(path)


def pca_rgb(tokens: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``tokens [B, T, D]`` -> ``[B, gh, gw, 3]`` in [0, 1]: the first 3 principal components of all patches of the
    batch (one shared basis, so colours compare across images), each min-max scaled."""
    b, _t, d = tokens.shape
    x = tokens.reshape(-1, d).astype(np.float64)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    comps = x @ vt[:3].T
    if comps.shape[1] < 3:
        comps = np.pad(comps, ((0, 0), (0, 3 - comps.shape[1])))
    lo, hi = comps.min(0), comps.max(0)
    comps = (comps - lo) / np.maximum(hi - lo, 1e-12)
    return comps.reshape(b, grid[0], grid[1], 3)


def save_pca_figure(images: np.ndarray, tokens: np.ndarray, patch_size: int, path, title: str = "") -> Path:
    """Each input beside the PCA-of-patch-features RGB map (upsampled to pixels)."""
    n = len(images)
    grid = (images.shape[1] // patch_size, images.shape[2] // patch_size)
    rgb = pca_rgb(tokens, grid)
    fig = figure(2.4 * n, 4.8)
    for i in range(n):
        ax = fig.add_subplot(2, n, i + 1)
        ax.imshow(np.asarray(images[i]).squeeze(-1) if images.ndim == 4 else images[i], cmap="gray", vmin=0,
                  vmax=255)
        ax.set_axis_off()
        ax = fig.add_subplot(2, n, n + i + 1)
        ax.imshow(np.kron(rgb[i], np.ones((patch_size, patch_size, 1))), interpolation="nearest")
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    return save(fig, path)


def save_probe_curves(train_loss: np.ndarray, val_loss: np.ndarray, path, title: str = "linear probe") -> Path:
    """Cross-entropy per epoch, one line per seed (train solid, validation dashed); NaN after early stopping."""
    fig = figure(6, 3.5)
    ax = fig.add_subplot(1, 1, 1)
    for s in range(len(train_loss)):
        epochs = np.arange(1, train_loss.shape[1] + 1)
        (line,) = ax.plot(epochs, train_loss[s], lw=1, label=f"seed {s} train")
        ax.plot(epochs, val_loss[s], "--", lw=1, color=line.get_color(), label=f"seed {s} val")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return save(fig, path)


def save_robustness_bars(results: dict[str, dict[int, tuple[float, float]]], path, metric: str = "macro-F1",
                         title: str = "robustness") -> Path:
    """``results[corruption][severity] = (mean, std)`` -> grouped bars, one group per corruption."""
    fig = figure(6, 3.5)
    ax = fig.add_subplot(1, 1, 1)
    corruptions = list(results)
    severities = sorted({s for r in results.values() for s in r})
    width = 0.8 / max(len(severities), 1)
    for j, sev in enumerate(severities):
        means = [results[c].get(sev, (np.nan, 0))[0] for c in corruptions]
        stds = [results[c].get(sev, (np.nan, 0))[1] for c in corruptions]
        ax.bar(np.arange(len(corruptions)) + (j - (len(severities) - 1) / 2) * width, means, width, yerr=stds,
               capsize=2, label=f"severity {sev}")
    ax.set_xticks(np.arange(len(corruptions)), corruptions)
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    return save(fig, path)


def save_few_shot_curve(fractions, means, stds, path, title: str = "few-shot linear probe") -> Path:
    fig = figure(5, 3.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.errorbar(100 * np.asarray(fractions), means, yerr=stds, marker="o", capsize=3)
    ax.set_xscale("log")
    ax.set_xlabel("% of the train split (stratified)")
    ax.set_ylabel("macro-F1")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    return save(fig, path)


def save_task_contact_sheet(data, path, per_class: int = 6, title: str = "") -> Path:
    """One row per class of a task (``EvalData``), ``per_class`` test images each: can a person see the label?"""
    split = data.test
    fig = figure(1.3 * per_class + 1.2, 1.3 * data.num_classes + 0.4)
    for c, name in enumerate(data.class_names):
        idx = np.flatnonzero(split.label == c)[:per_class]
        for j, i in enumerate(idx):
            ax = fig.add_subplot(data.num_classes, per_class, c * per_class + j + 1)
            ax.imshow(split.image[i].squeeze(-1), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle(title or f"task {data.name}: one row per class (test split)", fontsize=9)
    return save(fig, path)
