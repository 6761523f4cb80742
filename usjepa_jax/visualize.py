"""Small plotting helpers: masks from :class:`usjepa_jax.masks.MultiBlockMaskSampler` drawn over images, training
curves from ``metrics.jsonl`` records, and a live loss plot for notebooks.

Uses matplotlib's object API with the Agg canvas directly, so importing this module never changes the global
pyplot backend.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from usjepa_jax import storage

CONTEXT_COLOUR = (40, 110, 255)  # blue
TARGET_COLOURS = ((255, 60, 40), (255, 200, 0), (40, 220, 90), (230, 60, 230), (0, 220, 230), (255, 140, 0),
                  (160, 90, 255), (150, 255, 60))


def _blend(rgb: np.ndarray, cells: np.ndarray, colour, alpha: float, patch_size: int) -> None:
    """Alpha-blend ``colour`` into ``rgb`` (float, in place) over the patches where ``cells [gh, gw]`` is set."""
    pixels = np.kron(cells, np.ones((patch_size, patch_size), bool))
    h, w = pixels.shape
    region = rgb[:h, :w][pixels]
    rgb[:h, :w][pixels] = (1 - alpha) * region + alpha * np.asarray(colour, np.float32)


def overlay_masks(image: np.ndarray, sample: dict, patch_size: int, alpha: float = 0.45) -> np.ndarray:
    """``image [H, W]`` or ``[H, W, 1]`` (uint8) and one sampler output -> ``uint8 [H, W, 3]``: context patches
    tinted blue, each target block in its own colour (targets drawn in order, later ones over earlier ones)."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim != 2:
        raise ValueError(f"overlay_masks expects a grayscale image [H, W] or [H, W, 1], got shape {img.shape}")
    gh, gw = img.shape[0] // patch_size, img.shape[1] // patch_size
    rgb = np.repeat(img.astype(np.float32)[..., None], 3, axis=-1)

    def cells(idx, valid):
        grid = np.zeros(gh * gw, bool)
        grid[np.asarray(idx)[np.asarray(valid, bool)]] = True
        return grid.reshape(gh, gw)

    _blend(rgb, cells(sample["context_idx"], sample["context_valid"]), CONTEXT_COLOUR, alpha, patch_size)
    for m, (idx, valid) in enumerate(zip(sample["target_idx"], sample["target_valid"])):
        _blend(rgb, cells(idx, valid), TARGET_COLOURS[m % len(TARGET_COLOURS)], alpha, patch_size)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def save_mask_figure(images: Sequence[np.ndarray], samples: Sequence[dict], patch_size: int, path,
                     ncols: int = 4) -> Path:
    """A PNG grid of :func:`overlay_masks` panels, one per (image, sample) pair. Returns the path written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if len(images) != len(samples) or not images:
        raise ValueError(f"need as many samples as images (and at least one): {len(images)} vs {len(samples)}")
    n = len(images)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(2.5 * ncols, 2.5 * nrows))
    FigureCanvasAgg(fig)
    for i, (image, sample) in enumerate(zip(images, samples)):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(overlay_masks(image, sample, patch_size), interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(f"ctx {int(np.sum(sample['context_valid']))}, "
                     f"tgt {', '.join(str(int(v.sum())) for v in np.asarray(sample['target_valid']))}", fontsize=7)
    fig.tight_layout()
    storage.save_figure(fig, path, dpi=100)
    return storage.path(path)


def add_record(series: dict[str, dict[int, float]], record: dict[str, float]) -> None:
    """Fold one ``metrics.jsonl`` record (``{"step": s, name: value, ...}``) into ``{name: {step: value}}``
    (a step logged again, e.g. after a resume, overwrites the earlier value)."""
    for key, value in record.items():
        if key != "step":
            series.setdefault(key, {})[int(record["step"])] = float(value)


def plot_training_curves(ax, series: dict[str, dict[int, float]], title: str = "") -> None:
    """Train and validation loss on ``ax``; the k-NN monitor's accuracy on a right-hand axis."""
    for key, style, label in (("loss", "-", "train"), ("val_loss", "o-", "validation")):
        if key in series:
            steps = sorted(series[key])
            ax.plot(steps, [series[key][s] for s in steps], style, label=label, ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if "knn_accuracy" in series:
        right = ax.twinx()
        steps = sorted(series["knn_accuracy"])
        right.plot(steps, [series["knn_accuracy"][s] for s in steps], "s--", color="tab:green", ms=3,
                   label="k-NN accuracy")
        right.set_ylabel("k-NN accuracy")
        right.set_ylim(0, 1)
        more = right.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize=8)


class LiveLossPlot:
    """A loss plot that redraws in place in a notebook as training logs: pass it as ``on_log`` to
    ``train.train_and_evaluate(config, workdir, on_log=LiveLossPlot())``. One panel per run (the stage-1 teacher
    and the student are separate runs); outside IPython it does nothing but collect the records."""

    def __init__(self, every: int = 1):
        self.series: dict[str, dict[str, dict[int, float]]] = {}
        self.every, self._calls, self._handle = every, 0, None

    def __call__(self, run: str, record: dict[str, float]) -> None:
        add_record(self.series.setdefault(run, {}), record)
        self._calls += 1
        if self._calls % self.every == 0:
            self.draw()

    def figure(self):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5 * max(len(self.series), 1), 3.2), dpi=90)
        FigureCanvasAgg(fig)
        for i, (run, series) in enumerate(self.series.items()):
            plot_training_curves(fig.add_subplot(1, len(self.series), i + 1), series, title=Path(run).name)
        fig.tight_layout()
        return fig

    def draw(self) -> None:
        try:
            from IPython import get_ipython
            from IPython.display import Image, display
        except ImportError:
            return
        if get_ipython() is None:
            return
        buffer = io.BytesIO()
        self.figure().savefig(buffer, format="png")  # PNG bytes: shown whatever matplotlib backend is active
        image = Image(data=buffer.getvalue(), format="png")
        if self._handle is None:
            self._handle = display(image, display_id=True)
        else:
            self._handle.update(image)
