"""k-NN monitor during pretraining: a cheap, label-based signal of representation quality (and of collapse).

Every ``config.evals.knn.every`` steps (0: off) the trainer embeds two small labelled simulator sets (rendered once:
the train and test splits of the first task of ``config.evals.tasks``, seed streams disjoint from pretraining,
``monitor_num_train`` / ``monitor_num_test`` images)
with the encoder being trained and logs cosine k-NN accuracy and macro-F1 (``knn_accuracy``, ``knn_macro_f1``) to
the progress line and ``metrics.jsonl``. The full evaluation is ``python -m usjepa_jax.evaluate``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import ml_collections
import numpy as np

from usjepa_jax.encoders import normalize_images
from usjepa_jax.evaluation import tasks
from usjepa_jax.evaluation.features import FeatureExtractor
from usjepa_jax.evaluation.metrics import knn_metrics
from usjepa_jax.models import VisionTransformer


@dataclasses.dataclass(frozen=True)
class _Student:
    """The encoder being trained, as ``FeatureExtractor`` wants it: ``embed(params, uint8 images) -> tokens``, with
    the trainer's input normalisation (the student sees single-channel images)."""

    module: VisionTransformer
    mean: float
    std: float
    params: None = None  # always passed per call: the current training parameters

    def embed(self, params, images: jax.Array) -> jax.Array:
        return self.module.apply({"params": params}, normalize_images(images, self.mean, self.std, self.module.dtype))[0]


class KnnMonitor:
    def __init__(self, config: ml_collections.ConfigDict, encoder: VisionTransformer, mesh: jax.sharding.Mesh):
        evals, knn = config.evals, config.evals.knn
        self.knn = knn
        task = tasks.task_list(evals)[0]
        self.num_classes = len(tasks.task_class_names(task))
        self.train = tasks.simulated_task_split(task, config.data, "train", knn.monitor_num_train, evals.seed)
        self.test = tasks.simulated_task_split(task, config.data, "test", knn.monitor_num_test, evals.seed)
        self.extractor = FeatureExtractor(_Student(encoder, config.data.mean, config.data.std), evals.pooling,
                                          evals.batch_size, mesh=mesh)

    def __call__(self, encoder_params) -> dict[str, float]:
        """``encoder_params``: the student's current parameters (as sharded in the train state)."""
        x_train = self.extractor(self.train.image, encoder_params)
        x_test = self.extractor(self.test.image, encoder_params)
        if not (np.isfinite(x_train).all() and np.isfinite(x_test).all()):  # a diverged encoder: no accuracy
            return {"knn_accuracy": math.nan, "knn_macro_f1": math.nan}
        m = knn_metrics(x_train, self.train.label, x_test, self.test.label, self.num_classes, self.knn.k,
                        self.knn.temperature)
        return {"knn_accuracy": m["accuracy"], "knn_macro_f1": m["macro_f1"]}
