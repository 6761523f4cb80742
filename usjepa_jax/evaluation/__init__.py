"""Evaluation of frozen encoders (protocols: docs/method.md): linear probe, few-shot, k-NN, corruption robustness,
speckle invariance, collapse monitors, and figures. ``run_evaluators(encoder, config)`` runs those named in
``config.evals`` (``default_eval_config()``); ``python -m usjepa_jax.evaluate`` runs them on a training run."""

from usjepa_jax.evaluation.config import (
           EVALUATOR_NAMES,
           default_eval_config,
           validate_eval_config,
)
from usjepa_jax.evaluation.runner import EVALUATORS, EvalContext, run_evaluators

__all__ = ["EVALUATORS", "EVALUATOR_NAMES", "EvalContext", "default_eval_config", "run_evaluators",
           "validate_eval_config"]
