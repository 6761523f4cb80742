"""The evaluation entry point (evaluation/entry.py) end to end: a trained run's encoders evaluated into RUN/eval."""

import json

import numpy as np


def test_end_to_end_smoke(tmp_path):
    """Train the one-stage smoke config (pixel method), then evaluate its encoder (all evaluators), the same
    encoder as a `teacher`, a random init, and the encoder restored from the step-2 train checkpoint."""
    from configs import mae
    from usjepa_jax import train
    from usjepa_jax.evaluation.config import default_eval_config
    from usjepa_jax.evaluation.entry import evaluate_run
    from usjepa_jax.evaluation.runner import render_tasks

    cfg = mae.get_config("smoke")
    cfg.mesh.data = 1
    cfg.evals.evaluators = default_eval_config().evaluators  # the probe's evaluators (base.py: the token readouts)
    train.train_and_evaluate(cfg, tmp_path)
    results = evaluate_run(cfg, tmp_path, encoder="student", checkpoint="latest")
    for key in ("lesion/linear_probe/macro_f1_mean", "lesion/knn/accuracy", "lesion/collapse/rankme",
                "speckle_invariance/ratio", "lesion/robustness/blur/s3/macro_f1_mean",
                "lesion/few_shot/10pct/macro_f1_mean"):
        assert np.isfinite(results[key]), key
    for name in ("masks", "pca_features", "probe_curves", "robustness", "few_shot"):
        assert (tmp_path / "eval" / "student_latest" / "lesion" / f"{name}.png").is_file(), name
    # The other encoders: the cheap monitors only, on one task rendered once for the three of them.
    cfg.evals.evaluators, cfg.evals.tasks = "knn,collapse", "lesion"
    cfg.teacher.checkpoint = str(tmp_path / "encoder")
    lesion = render_tasks(cfg)
    teacher = evaluate_run(cfg, tmp_path, encoder="teacher", data=lesion)
    assert teacher["lesion/knn/accuracy"] == results["lesion/knn/accuracy"]  # the same encoder, loaded as a teacher
    evaluate_run(cfg, tmp_path, encoder="random", data=lesion)
    evaluate_run(cfg, tmp_path, encoder="student", checkpoint="2", data=lesion)
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(saved) == {"student:latest", "teacher", "random", "student:step_2"}
    assert saved["student:step_2"]["content_hash"] != saved["student:latest"]["content_hash"]
    assert saved["student:latest"]["metrics"]["lesion"]["knn/accuracy"] == results["lesion/knn/accuracy"]
