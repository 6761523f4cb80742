"""The speckle claim's equal-FLOPs plan (experiments/speckle_claim.py)."""

import pytest

from experiments import speckle_claim


def test_step_flops_counts_every_micro_batch():
    """A step of 4 micro-batches is the same work as one of the whole batch; XLA's cost analysis counts a loop's
    body once, so without care it would report about a quarter."""
    config = speckle_claim.method_config("pixel", smoke=True)
    config.optim.grad_accum_steps = 1
    whole = speckle_claim.step_flops(config)
    config.optim.grad_accum_steps = 4
    assert speckle_claim.step_flops(config) == pytest.approx(whole, rel=0.02)
