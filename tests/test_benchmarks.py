"""The step benchmark's FLOP accounting (benchmarks/train_step.py): docs/performance.md's MFU figures rest on it."""
import importlib
import sys

import numpy as np
import pytest

from tests.conftest import REPO, smoke_config


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        yield importlib.import_module("train_step")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


@pytest.mark.parametrize("truncate", [False, True])
def test_useful_flops_count_the_tokens_the_step_runs(bench, truncate):
    """Useful FLOPs are counted on the batch as placed: padding cut by the buckets is not counted either way, and
    with ``truncate_to_batch_min`` (the official rule, equal work) every kept slot is valid, so the useful count is
    the count at the step's own shapes, and the patches the cut drops are not counted."""
    from usjepa_jax import train

    config = smoke_config(**{"masks.truncate_to_batch_min": truncate, "optim.batch_size": 8})
    trainer = train.build_trainer(config, bench.random_teacher(config))
    rng = np.random.default_rng(0)
    for _ in range(3):
        host = bench.masked_batch(trainer, rng)
        placed = trainer.place_batch(host)
        useful = bench.batch_useful_flops(trainer, placed, cached=False)
        context_len, target_len = placed["context_idx"].shape[1], placed["target_idx"].shape[2]
        at_shapes = bench.useful_flops(trainer, np.full(8, context_len),
                                       np.full((8, trainer.sampler.num_targets), target_len), cached=False)
        sampled = bench.useful_flops(trainer, host["context_valid"].sum(-1), host["target_valid"].sum(-1),
                                     cached=False)
        if truncate:
            assert useful == pytest.approx(at_shapes, rel=1e-12)
            assert useful < sampled  # the dropped patches: this batch's contexts differ in size
        else:
            assert useful == pytest.approx(sampled, rel=1e-12)  # only padding was cut
            assert useful < at_shapes
