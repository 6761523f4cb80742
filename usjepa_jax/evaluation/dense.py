"""Dense linear probe on frozen patch tokens: a segmentation read out of each patch token by one linear map.

Every patch token ``[D]`` goes through the same linear layer to class logits ``[C]``; the patch's logits stand for
each of its pixels (nearest upsampling to the input size). Training minimises the per-pixel cross-entropy, which
under nearest upsampling is exactly the soft cross-entropy of a patch's logits against the fractions of its pixels
in each class (``patch_targets``), averaged over patches and images. Prediction: the argmax class of a patch fills
its pixels. So a segmentation finer than the patch grid is scored at full resolution, and a perfect readout of a
patch-constant map scores mIoU 1.

Protocol (``config.evals.dense``): AdamW lr 1e-3, cosine to 0 over ``max_epochs``, weight decay 1e-4, batch 64
images (all their tokens), at most 50 epochs with early stopping on the validation loss, patience 5 (the best
validation epoch's parameters are kept), tokens z-scored per dimension over all train positions, 5 seeds
(initial weights N(0, 0.01^2), shuffling), ``vmap``-ed, in the linear probe's jitted loop (probe.py, ``LinearHead``
on tokens). Metrics on the test split, mean and std over seeds: ``miou`` and ``dice`` (per class IoU = TP / (TP +
FP + FN) and Dice = 2 TP / (2 TP + FP + FN) over all test pixels, averaged over the classes present in the labels
or the predictions, as the classification metrics are; the background class counts like any other) and
``pixel_accuracy``.

Targets: the simulator's tissue map (``Split.segmentation``, codes of ``SEGMENTATION_NAMES``) or a real
task's masks (labelled.py, UltraBench segmentation tasks), class indices per pixel ``[N, S, S]``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from usjepa_jax.data.simulator.config import SEGMENTATION_NAMES
from usjepa_jax.evaluation.probe import ProbeConfig, TrainedProbe, train_probe


def patch_fractions(segmentation: np.ndarray, patch: int, num_codes: int | None = None) -> np.ndarray:
    """Per patch, the fraction of its pixels of each tissue code.

    ``segmentation`` uint8 ``[N, S, S]`` -> float32 ``[N, (S // patch)^2 * num_codes]``."""
    num_codes = num_codes or len(SEGMENTATION_NAMES)
    n, s = segmentation.shape[:2]
    g = s // patch
    seg = segmentation[:, :g * patch, :g * patch].reshape(n, g, patch, g, patch)
    onehot = seg[..., None] == np.arange(num_codes, dtype=segmentation.dtype)
    return onehot.mean(axis=(2, 4), dtype=np.float32).reshape(n, -1)


def patch_targets(segmentation: np.ndarray, patch: int, num_classes: int) -> np.ndarray:
    """Class indices ``[N, S, S]`` -> the fraction of each patch's pixels in each class ``[N, (S // patch)^2, C]``
    (patches in row-major order, as a ViT's tokens; pixels past the last whole patch are dropped): the oracle's
    per-patch tissue fractions (``patch_fractions``), one row per patch."""
    return patch_fractions(np.asarray(segmentation), patch, num_classes).reshape(len(segmentation), -1, num_classes)


def upsample_patches(classes: np.ndarray, patch: int) -> np.ndarray:
    """Per-patch classes ``[..., T]`` (T = g^2, row-major) -> per-pixel ``[..., g * patch, g * patch]`` (nearest)."""
    g = int(round(np.sqrt(classes.shape[-1])))
    grid = classes.reshape(classes.shape[:-1] + (g, g))
    return np.repeat(np.repeat(grid, patch, axis=-2), patch, axis=-1)


def segmentation_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, float]:
    """mIoU, mean Dice and pixel accuracy of one predicted map set against the labels (module docstring)."""
    y_true, y_pred = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    cm = np.bincount(y_true.astype(np.int64) * num_classes + y_pred, minlength=num_classes**2)
    cm = cm.reshape(num_classes, num_classes)
    tp = np.diag(cm).astype(np.float64)
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    present = (cm.sum(0) + cm.sum(1)) > 0
    iou = tp[present] / (tp + fp + fn)[present]
    dice = 2 * tp[present] / (2 * tp + fp + fn)[present]
    return {"miou": float(iou.mean()), "dice": float(dice.mean()), "pixel_accuracy": float(tp.sum() / max(cm.sum(), 1))}


@dataclasses.dataclass
class DenseProbe:
    """The trained per-token linear maps of all seeds, and the patch size that maps tokens to pixels."""

    probe: TrainedProbe
    patch: int

    def predict(self, tokens: np.ndarray) -> np.ndarray:
        """Tokens ``[N, T, D]`` -> per-pixel classes ``[seeds, N, S, S]``."""
        return upsample_patches(self.probe.predict(tokens), self.patch)

    def evaluate(self, tokens: np.ndarray, segmentation: np.ndarray) -> dict[str, float]:
        """``{metric}_mean`` / ``{metric}_std`` over seeds of ``segmentation_metrics``."""
        pred = self.predict(tokens)
        s = pred.shape[-1]
        truth = np.asarray(segmentation)[:, :s, :s]
        per_seed = [segmentation_metrics(truth, p, self.probe.num_classes) for p in pred]
        out = {}
        for name in per_seed[0]:
            values = np.array([m[name] for m in per_seed])
            out[f"{name}_mean"], out[f"{name}_std"] = float(values.mean()), float(values.std())
        return out


def train_dense_probe(tokens_train: np.ndarray, seg_train: np.ndarray, tokens_val: np.ndarray, seg_val: np.ndarray,
                      num_classes: int, patch: int, cfg: ProbeConfig, seed: int = 0) -> DenseProbe:
    """The dense probe on tokens ``[N, T, D]`` with pixel labels ``[N, S, S]`` (T = (S // patch)^2)."""
    grid = (np.shape(seg_train)[1] // patch) ** 2
    if np.ndim(tokens_train) != 3 or np.shape(tokens_train)[1] != grid:
        raise ValueError(f"dense probe: tokens of shape {np.shape(tokens_train)} for {np.shape(seg_train)[1]} px "
                         f"maps at patch {patch} (expected [N, {grid}, D]).")
    probe = train_probe(tokens_train, patch_targets(seg_train, patch, num_classes), tokens_val,
                        patch_targets(seg_val, patch, num_classes), num_classes, cfg, seed)
    return DenseProbe(probe, patch)
