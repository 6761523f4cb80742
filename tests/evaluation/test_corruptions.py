"""Corruptions of the robustness evaluator (evaluation/corruptions.py): identity at severity 0, monotone,
kernel sizes."""

import numpy as np
import pytest

from usjepa_jax.evaluation import corruptions


@pytest.mark.parametrize("name", ["blur", "contrast", "speckle"])
def test_corruptions_identity_and_monotone(name):
    from usjepa_jax.data.synthetic import SimulatorConfig, render

    out = render(1, 2, SimulatorConfig(image_size=64))
    image, mask = out["image"][..., None], out["scan_mask"]
    same = corruptions.corrupt(name, image, mask, 0, np.random.default_rng(0))
    np.testing.assert_array_equal(same, image)
    effects = [np.abs(corruptions.corrupt(name, image, mask, s, np.random.default_rng(0)).astype(float)
                      - image).mean() for s in (1, 2, 3)]
    assert 0 < effects[0] < effects[1] < effects[2], effects


def test_blur_kernel_size():
    impulse = np.zeros((21, 21), np.uint8)
    impulse[10, 10] = 255
    for e in (1, 2, 3):
        support = np.flatnonzero(corruptions.gaussian_blur(impulse, e)[10] > 0)
        assert support.max() - support.min() + 1 <= 2 * int(np.floor(2 * e)) + 1
