"""Evaluation data types (``Split``, ``EvalData``: one labelled task, shared by every evaluator and every encoder)
and the speckle-invariance set.

The labelled tasks themselves are built by ``tasks.py`` (the simulated suite) or by a real labelled dataset; both
return ``EvalData``. The invariance set comes from its own seed stream (``EVAL_STREAMS``), disjoint from the
pretraining streams (``derive_seed(config.seed, 0|1|2)``) and from the tasks' streams.
Images go through the pipeline's ``ToModelInput`` (resize to ``config.data.image_size``, black outside the scan).
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np
from PIL import Image

from usjepa_jax.data.pipeline import ToModelInput
from usjepa_jax.data.preprocess import resize_square
from usjepa_jax.data.seeding import derive_seed
from usjepa_jax.data.settings import simulator_config
from usjepa_jax.data.synthetic import render

EVAL_STREAMS = {"invariance": 103}  # 100-102 were the splits of the single lesion task, now tasks.py's streams


@dataclasses.dataclass
class Split:
    image: np.ndarray  # uint8 [N, S, S, 1]
    scan_mask: np.ndarray  # bool [N, S, S]
    label: np.ndarray  # int32 [N]
    segmentation: np.ndarray | None = None  # uint8 [N, S, S] tissue codes (simulated tasks: the oracle's input)
    anatomy_seed: np.ndarray | None = None  # uint64 [N] (simulated tasks: what the splits are disjoint by)
    label_parameters: np.ndarray | None = None  # float32 [N, P] (simulated tasks: what defines a diffuse label)

    def __len__(self) -> int:
        return len(self.label)

    def subset(self, idx: np.ndarray) -> Split:
        return Split(*(None if a is None else a[idx] for a in (self.image, self.scan_mask, self.label,
                                                                self.segmentation, self.anatomy_seed,
                                                                self.label_parameters)))


@dataclasses.dataclass
class EvalData:
    """One labelled task: three splits, ``num_classes`` classes named ``class_names`` (labels index into them)."""

    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: tuple[str, ...]
    name: str = "task"
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)  # input files left out: file, reason


def _model_input(out: dict, to_input: ToModelInput) -> dict:
    return to_input.map({"image": out["image"], "scan_mask": out["scan_mask"], "label": out["label"], "index": 0})


def render_invariance_set(data_config: ml_collections.ConfigDict, num_anatomies: int, num_speckles: int,
                          seed: int) -> dict[str, np.ndarray]:
    """``num_anatomies`` phantoms, each under ``num_speckles`` speckle seeds: ``image`` uint8 ``[M, K, S, S, 1]``,
    ``segmentation`` uint8 ``[M, K, S, S]`` (identical along K: anatomy only), ``label`` ``[M]``,
    ``scan_mask`` bool ``[S, S]`` (shared).

    All M phantoms are scanned with one acquisition (geometry, pulse, gain, dynamic range drawn once, no burned-in
    overlays): otherwise the scan geometry and gain, which every encoder (a random one too) picks up, dominate the
    differences between anatomies and hide what speckle does. Across anatomies only the tissue differs, within an
    anatomy only the speckle; and the patch grids of all images are aligned, so patch tokens can be compared too.
    """
    sim = dataclasses.replace(simulator_config(data_config), overlay_prob=0.0)
    to_input = ToModelInput(data_config.image_size)
    base = derive_seed(seed, EVAL_STREAMS["invariance"])
    acquisition = derive_seed(base, 2**20)
    images, segs, labels = [], [], []
    for m in range(num_anatomies):
        row, seg_row = [], []
        for k in range(num_speckles):
            out = render(derive_seed(base, m, 0), derive_seed(base, m, 1, k), sim, acquisition_seed=acquisition)
            model_input = _model_input(out, to_input)
            row.append(model_input["image"])
            seg_row.append(resize_nearest(out["segmentation"], data_config.image_size))
        labels.append(out["label"])
        images.append(np.stack(row))
        segs.append(np.stack(seg_row))
    return {"image": np.stack(images), "segmentation": np.stack(segs), "label": np.asarray(labels, np.int32),
            "scan_mask": np.asarray(model_input["scan_mask"], bool)}


def resize_nearest(array: np.ndarray, size: int) -> np.ndarray:
    return resize_square(array, size, Image.NEAREST)
