"""The rows of a task table that are not encoders, and the readouts that any features get.

What the label is made of (``oracle_features``) and the raw pixels (``raw_pixel_features``) are probed like an
encoder's features (``probe_on``: the linear probe), and their tokens get the attentive and dense readouts
(``token_readouts``), so a table shows how far an encoder is from the floor and from the ceiling of a task
(experiments/sweep.py, experiments/task_suite.py).
"""

from __future__ import annotations

import time

import numpy as np

from usjepa_jax.evaluation import attentive, dense
from usjepa_jax.evaluation.data import EvalData, Split
from usjepa_jax.evaluation.probe import ProbeConfig, train_probe

ORACLE_PATCH = 8


def oracle_features(split: Split, num_codes: int | None = None) -> np.ndarray:
    """The oracle: what the label is made of, as features for the linear probe.

    Tasks whose label the segmentation holds (lesion type, organ): the phantom's tissue fractions per
    ``ORACLE_PATCH``-pixel patch and over the whole image (a linear function of the per-patch ones, but a probe
    trained on a few thousand images finds them far more easily when given directly). Tasks defined by simulator
    parameters (``LABEL_PARAMETERS``: the grade's parenchyma echogenicity and attenuation, the margin's boundary
    harmonics): those parameters alone (adding tissue fractions to them only makes the probe's job harder;
    experiments/task_suite.py measures the oracle per task)."""
    if split.label_parameters is not None:
        return split.label_parameters
    size = split.segmentation.shape[1]
    return np.concatenate([dense.patch_fractions(split.segmentation, ORACLE_PATCH, num_codes),
                           dense.patch_fractions(split.segmentation, size, num_codes)], axis=1)


def raw_pixel_features(split: Split) -> np.ndarray:
    """The model-input image, flattened, in [0, 1]."""
    return split.image.reshape(len(split), -1).astype(np.float32) / 255


def probe_on(data: EvalData, featurize, probe_cfg, seed: int = 0) -> dict[str, float]:
    """The linear probe (paper protocol) on ``featurize(split)`` features of one task: test metrics, mean/std over
    seeds."""
    x_tr, x_va, x_te = (featurize(s) for s in (data.train, data.val, data.test))
    probe = train_probe(x_tr, data.train.label, x_va, data.val.label, data.num_classes, probe_cfg, seed)
    return probe.evaluate(x_te, data.test.label)


def token_readouts(data, tokens, patch: int, config, readouts, oracle: bool = False) -> dict:
    """The attentive and dense probes (``readouts``: a subset of ``{"attentive", "dense"}``) on ``tokens(split) ->
    [N, T, D]`` of one task, with ``config.evals``'s protocols: ``{readout: test metrics}``. Features that are not
    an encoder's (patch pixels, the oracle's tissue fractions) get the same readouts as the encoders."""
    evals, out = config.evals, {}
    if not {"attentive", "dense"} & set(readouts):
        return out  # the linear probe alone: no tokens needed
    x = {name: tokens(getattr(data, name)) for name in ("train", "val", "test")}
    if "attentive" in readouts and not (oracle and data.train.label_parameters is not None):
        t = time.perf_counter()
        head = attentive.AttentiveHead(int(evals.attentive.num_heads), float(evals.attentive.mlp_ratio))
        probe = attentive.train_attentive_probe(x["train"], data.train.label, x["val"], data.val.label,
                                                data.num_classes, ProbeConfig.from_config(evals.attentive), head,
                                                evals.seed)
        out["attentive"] = probe.evaluate(x["test"], data.test.label)
        out["attentive"].update(epochs_mean=float(probe.epochs.mean()), seconds=time.perf_counter() - t)
    if "dense" in readouts:
        t = time.perf_counter()
        num_codes = int(max(s.segmentation.max() for s in (data.train, data.val, data.test))) + 1
        probe = dense.train_dense_probe(x["train"], data.train.segmentation, x["val"], data.val.segmentation,
                                        num_codes, patch, ProbeConfig.from_config(evals.dense), evals.seed)
        out["dense"] = probe.evaluate(x["test"], data.test.segmentation)
        out["dense"].update(epochs_mean=float(probe.probe.epochs.mean()), seconds=time.perf_counter() - t)
    return out
