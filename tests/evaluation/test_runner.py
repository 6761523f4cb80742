"""The evaluators of evaluation/runner.py on an encoder's tokens."""

import numpy as np


def test_runner_evaluators_on_tokens_of_an_encoder():
    """``attentive_probe`` and ``dense_probe`` run by name on an encoder's tokens, with the linear probe's metric
    names; the dense probe gives nothing on a task without masks."""
    from configs import base
    from usjepa_jax.evaluation.data import EvalData, Split
    from usjepa_jax.evaluation.features import random_encoder
    from usjepa_jax.evaluation.runner import run_evaluators

    cfg = base.get_config("smoke")
    cfg.model.depth, cfg.data.image_size = 1, 16
    cfg.evals.evaluators = "attentive_probe,dense_probe"
    rng = np.random.default_rng(0)

    def split(n):
        seg = np.repeat(np.repeat(rng.integers(0, 3, (n, 2, 2)), 8, 1), 8, 2).astype(np.uint8)
        image = (seg[..., None] * 100 + rng.integers(0, 20, (n, 16, 16, 1))).astype(np.uint8)
        return Split(image, np.ones((n, 16, 16), bool), (seg[:, 0, 0] > 0).astype(np.int32), segmentation=seg)

    data = EvalData(split(40), split(20), split(20), 2, ("a", "b"), name="toy")
    encoder = random_encoder(cfg.model, 16)
    results, _ = run_evaluators(encoder, cfg, data)
    for key in ("toy/attentive_probe/macro_f1_mean", "toy/attentive_probe/balanced_accuracy_std",
                "toy/dense_probe/miou_mean", "toy/dense_probe/dice_mean"):
        assert np.isfinite(results[key]), key
    data.train.segmentation = None
    results, _ = run_evaluators(encoder, cfg, data)
    assert not any(k.startswith("toy/dense_probe/") and not k.endswith("seconds") for k in results)
