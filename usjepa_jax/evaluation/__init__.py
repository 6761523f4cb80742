"""Evaluation of frozen encoders (protocols: docs/method.md): linear probe, few-shot, k-NN, corruption robustness,
speckle invariance, collapse monitors, and figures. ``runner.run_evaluators(encoder, config)`` runs those named in
``config.evals`` (``config.default_eval_config()``); ``python -m usjepa_jax.evaluate`` runs them on a training run.

Nothing is imported here: ``evaluation.config`` is part of the jax-free config schema (``usjepa_jax/config.py``).
"""
