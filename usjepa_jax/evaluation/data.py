"""Labelled evaluation images from the simulator, rendered once and shared by every evaluator (and every encoder).

Splits ``train``/``val``/``test`` come from seed streams (``derive_seed(evals.seed, 100 + k)``) disjoint from the
pretraining streams (``derive_seed(config.seed, 0|1|2)``), so no evaluation anatomy was seen in pretraining.
Images go through the pipeline's ``ToModelInput`` (resize to ``config.data.image_size``, black outside the scan).
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from usjepa_jax.data.pipeline import ToModelInput, simulator_config
from usjepa_jax.data.synthetic import (
    CLASS_NAMES,
    SyntheticUltrasoundSource,
    derive_seed,
    render,
)

EVAL_STREAMS = {"train": 100, "val": 101, "test": 102, "invariance": 103}


@dataclasses.dataclass
class Split:
    image: np.ndarray  # uint8 [N, S, S, 1]
    scan_mask: np.ndarray  # bool [N, S, S]
    label: np.ndarray  # int32 [N]

    def __len__(self) -> int:
        return len(self.label)

    def subset(self, idx: np.ndarray) -> Split:
        return Split(self.image[idx], self.scan_mask[idx], self.label[idx])


@dataclasses.dataclass
class EvalData:
    train: Split
    val: Split
    test: Split
    num_classes: int = len(CLASS_NAMES)
    class_names: tuple[str, ...] = CLASS_NAMES


def _model_input(out: dict, to_input: ToModelInput) -> dict:
    return to_input.map({"image": out["image"], "scan_mask": out["scan_mask"], "label": out["label"], "index": 0})


def render_split(data_config: ml_collections.ConfigDict, split: str, num: int, seed: int) -> Split:
    source = SyntheticUltrasoundSource(num, derive_seed(seed, EVAL_STREAMS[split]), simulator_config(data_config))
    to_input = ToModelInput(data_config.image_size)
    items = [_model_input(source[i], to_input) for i in range(num)]
    return Split(np.stack([it["image"] for it in items]), np.stack([it["scan_mask"] for it in items]).astype(bool),
                 np.asarray([it["label"] for it in items], np.int32))


def render_eval_data(data_config: ml_collections.ConfigDict, evals: ml_collections.ConfigDict) -> EvalData:
    return EvalData(*(render_split(data_config, split, evals[f"num_{split}"], evals.seed)
                      for split in ("train", "val", "test")))


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
            seg_row.append(_resize_nearest(out["segmentation"], data_config.image_size))
        labels.append(out["label"])
        images.append(np.stack(row))
        segs.append(np.stack(seg_row))
    return {"image": np.stack(images), "segmentation": np.stack(segs), "label": np.asarray(labels, np.int32),
            "scan_mask": np.asarray(model_input["scan_mask"], bool)}


def _resize_nearest(array: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if array.shape[:2] == (size, size):
        return array
    return np.asarray(Image.fromarray(array).resize((size, size), Image.NEAREST))
