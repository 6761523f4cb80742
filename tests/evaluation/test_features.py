"""Features (evaluation/features.py): the store resumes an interrupted extraction; pixel tokens follow the
patch grid."""

import json

import numpy as np
import pytest

from tests.conftest import LABELLED_SIZE, eval_smoke_config, geometry_images
from usjepa_jax.evaluation.features import FeatureExtractor, FeatureStore, pixel_tokens, random_encoder


def test_feature_store_resumes_an_interrupted_extraction(tmp_path):
    c = eval_smoke_config()
    enc = random_encoder(c.model, LABELLED_SIZE, seed=0)
    images = np.stack([img for img, _ in geometry_images(10)])[:, ::2, ::2, None]
    reference = FeatureExtractor(enc, batch_size=4)(images)

    class Interrupting(FeatureExtractor):
        calls = 0

        def __call__(self, x, params=None):
            Interrupting.calls += 1
            if Interrupting.calls == 3:
                raise KeyboardInterrupt
            return super().__call__(x, params)

    store = FeatureStore(tmp_path, Interrupting(enc, batch_size=4), chunk=4)
    with pytest.raises(KeyboardInterrupt):
        store.get("k", images)
    assert json.loads((tmp_path / "k.partial.json").read_text())["done"] == 8
    resumed = FeatureStore(tmp_path, FeatureExtractor(enc, batch_size=4), chunk=4)
    logs = []
    resumed.log = logs.append
    out = resumed.get("k", images)
    assert "resuming at 8/10" in logs[0] and resumed.images == 2
    np.testing.assert_allclose(out, reference, atol=1e-5)
    assert (tmp_path / "k.npy").exists() and not (tmp_path / "k.partial.npy").exists()


def test_pixel_tokens_follow_the_patch_grid():
    image = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)
    tokens = pixel_tokens(image, 2) * 255  # row-major patches, each patch's pixels row-major
    np.testing.assert_allclose(tokens[0], [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]], atol=1e-4)
