"""Looking at the simulator's output: lesion CNR by class and size, a contact sheet, a PNG sample on disk."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from usjepa_jax.data.simulator.config import (CLASS_NAMES, LESION_SEGMENT, SEGMENTATION_NAMES, TASK_CLASSES,
                                              SimulatorConfig, jsonable)
from usjepa_jax.data.simulator.render import render
from usjepa_jax.data.simulator.source import SyntheticUltrasoundSource


def lesion_cnr(image: np.ndarray, segmentation: np.ndarray, code: int, scan_mask: np.ndarray,
               gap: int = 1, width: int | None = None) -> float:
    """``|mean inside - mean of a ring around| / std of the ring`` on the B-mode image.

    The ring: pixels between ``gap`` and ``gap + width`` pixels outside the lesion (``width`` defaults to half the
    lesion's equivalent radius, at least 2 pixels), inside the scan region. NaN without lesion pixels."""
    import scipy.ndimage

    inside = segmentation == code
    n = int(inside.sum())
    if n == 0:
        return float("nan")
    width = width or max(2, round(0.5 * np.sqrt(n / np.pi)))
    near = scipy.ndimage.binary_dilation(inside, iterations=gap)
    ring = scipy.ndimage.binary_dilation(inside, iterations=gap + width) & ~near & scan_mask
    values = image.astype(np.float64)
    if ring.sum() < 4:
        return float("nan")
    return float(abs(values[inside].mean() - values[ring].mean()) / max(values[ring].std(), 1e-6))


def cnr_table(sizes: tuple[int, ...] = (64, 224), num: int = 200, seed: int = 0) -> dict[int, dict[str, float]]:
    """Median lesion CNR per class and output size over ``num`` images (the same anatomies at every size)."""
    table = {}
    for size in sizes:
        config = SimulatorConfig(image_size=size, overlay_prob=0.0)
        source = SyntheticUltrasoundSource(num, seed, config)
        values: dict[str, list[float]] = {name: [] for name in CLASS_NAMES[1:]}
        for i in range(num):
            a, s = source.seeds(i)
            out = render(a, s, config)
            if out["label"]:
                values[CLASS_NAMES[out["label"]]].append(
                    lesion_cnr(out["image"], out["segmentation"], LESION_SEGMENT[out["label"]], out["scan_mask"]))
        table[size] = {name: float(np.nanmedian(v)) if v else float("nan") for name, v in values.items()}
    return table


def contact_sheet(path: str | Path, num: int = 24, seed: int = 0, size: int = 224, columns: int = 6) -> Path:
    """A grid of images titled with organ, probe, lesion, margin and grade (no outline: the lesion must be seen),
    plus a row: one anatomy under 6 speckle seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = SimulatorConfig(image_size=size)
    source = SyntheticUltrasoundSource(num, seed, config)
    rows = -(-num // columns) + 1
    fig, axes = plt.subplots(rows, columns, figsize=(2.3 * columns, 2.45 * rows), dpi=90)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < num:
            a, s = source.seeds(i)
            ex = render(a, s, config)
            ax.imshow(ex["image"], cmap="gray", vmin=0, vmax=255)
            p = ex["params"]
            margin = f" {p['margin']}" if p["margin"] else ""
            ax.set_title(f"{p['organ']} ({p['geometry'][:3]}, {p['depth_mm']:.0f} mm)\n{p['lesion']}{margin}, "
                         f"grade {p['grade']}", fontsize=7)
    anatomy_seed = source.seeds(1)[0]
    first_speckle_cell = (rows - 1) * columns
    for k, ax in enumerate(axes.flat[first_speckle_cell:]):
        ax.imshow(render(anatomy_seed, 1000 + k, config)["image"], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"same anatomy, speckle {k}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def write_sample(out: str | Path, num: int, size: int = 224, seed: int = 0) -> dict[str, Any]:
    """PNG images, segmentation and scan masks, and ``labels.json``; returns a summary."""
    from PIL import Image

    out = Path(out)
    for sub in ("images", "segmentation", "scan_mask"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    source = SyntheticUltrasoundSource(num, seed, SimulatorConfig(image_size=size))
    records, start = [], time.perf_counter()
    for i in range(num):
        anatomy_seed, speckle_seed = source.seeds(i)
        ex = render(anatomy_seed, speckle_seed, source.config)
        name = f"{i:06d}.png"
        Image.fromarray(ex["image"]).save(out / "images" / name)
        Image.fromarray(ex["segmentation"]).save(out / "segmentation" / name)
        Image.fromarray(ex["scan_mask"].astype(np.uint8) * 255).save(out / "scan_mask" / name)
        records.append(dict(index=i, file=f"images/{name}", anatomy_seed=anatomy_seed, speckle_seed=speckle_seed,
                            label=ex["label"], class_name=CLASS_NAMES[ex["label"]], labels=ex["labels"],
                            params=jsonable(ex["params"])))
    elapsed = time.perf_counter() - start
    (out / "labels.json").write_text(json.dumps(dict(class_names=CLASS_NAMES, task_classes=TASK_CLASSES,
                                                     segmentation_names=SEGMENTATION_NAMES, examples=records),
                                                indent=1))
    counts = np.bincount([r["label"] for r in records], minlength=len(CLASS_NAMES))
    return dict(num=num, size=size, seed=seed, out=str(out), seconds=round(elapsed, 2),
                classes={CLASS_NAMES[c]: int(n) for c, n in enumerate(counts)})
