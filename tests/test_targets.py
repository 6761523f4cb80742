"""Every target source through the one interface (targets.py): width, state, [B, N, D] targets, update, loss;
and a new method added as one module (tests/edges_method.py) plus a config value trains through the unchanged
trainer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import smoke_config
from usjepa_jax import config as config_lib
from usjepa_jax import objectives, targets, train
from usjepa_jax.encoders import FrozenEncoder, normalize_images
from usjepa_jax.encoders import cache as teacher_cache

B = 2


@pytest.fixture(scope="module")
def setup():
    config = smoke_config()
    encoder = train.build_encoder(config.model)
    s = config.data.image_size
    images = np.random.default_rng(0).integers(0, 256, (B, s, s, 1), dtype=np.uint8)
    params = encoder.init(jax.random.key(0), jnp.zeros((1, s, s, 1)))["params"]
    return config, encoder, images, params, (s // encoder.patch_size) ** 2


def sources(config, encoder, params, tokens):
    """(source, frozen params, extra batch keys, the targets it must give for the images)."""
    mean, std = config.data.mean, config.data.std
    teacher = FrozenEncoder(encoder, params, 1, 0.5, 0.25, "<random>", "hash")
    cache = teacher_cache.TeacherCache("<dir>", "<random>", "hash", 24, tokens, encoder.patch_size, False)
    cached = np.random.default_rng(1).standard_normal((B, tokens, 24)).astype(jnp.bfloat16)
    return {
        "frozen_teacher": (targets.FrozenTeacher(teacher, config.loss), params, {},
                           lambda im: teacher.embed(params, im)),
        "cached_teacher": (targets.CachedTeacher(cache, config.loss), None, {teacher_cache.KEY: cached},
                           lambda im: cached),
        "ema": (targets.EMATeacher(encoder, config), None, {},
                lambda im: encoder.apply({"params": params}, normalize_images(im, mean, std))[0]),
        "pixels": (targets.Pixels(encoder.patch_size, config), None, {},
                   lambda im: objectives.pixel_targets(normalize_images(im, mean, std), encoder.patch_size)),
    }


@pytest.mark.parametrize("name", ["frozen_teacher", "cached_teacher", "ema", "pixels"])
def test_source_interface(setup, name):
    config, encoder, images, params, tokens = setup
    source, frozen, extra, expected = sources(config, encoder, params, tokens)[name]
    state = source.init_state(params)
    assert (state is not None) == (name == "ema")  # only the EMA copy carries state
    assert (source.frozen_params is not None) == (name == "frozen_teacher")  # only a teacher is placed frozen
    assert set(source.batch_keys) == set(extra)  # what the pipeline must attach
    out = source.targets(state, frozen, {"image": images, **extra})
    assert out.shape == (B, tokens, source.width)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(expected(images), np.float32), atol=1e-6)

    # The loss: zero at the (normalised, standardised: base.py's loss) target, positive elsewhere; padded slots do
    # not count.
    idx = jnp.asarray(np.stack([np.arange(8).reshape(2, 4)] * B))
    target = objectives.gather_patches(jnp.asarray(out, jnp.float32), idx)
    valid = jnp.ones(idx.shape, bool).at[:, :, -1].set(False)
    latent = name != "pixels"
    perfect = objectives.layer_norm_no_affine(target) if source.normalize_targets and latent else target
    if source.standardize_targets and latent:
        perfect = objectives.standardize_features(perfect, valid)
    assert float(source.loss(perfect, target, valid)) < 1e-6
    assert float(source.loss(perfect.at[:, :, -1].add(5.0), target, valid)) < 1e-6
    assert float(source.loss(perfect + 1.0, target, valid)) > 0.1

    # After a step: the EMA copy moves by (1 - momentum) toward the student; the others keep no state.
    moved = jax.tree.map(lambda p: p + 1.0, params)
    new_state, metrics = source.update(state, moved, jnp.asarray(0))
    if name == "ema":
        m = float(metrics["ema_momentum"])
        assert m == pytest.approx(config.ema.start)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b + (1 - m), atol=1e-6), new_state, params)
    else:
        assert new_state is None and metrics == {}


def test_a_new_method_is_one_module_and_a_config_value(monkeypatch):
    """tests/edges_method.py, as docs/adding_a_method.md says: registered on import, its keys in every default
    config, its checks run only when it is chosen, trained by the unchanged trainer."""
    monkeypatch.setattr(config_lib, "METHODS", dict(config_lib.METHODS))  # the registry as it was after the test
    from tests import edges_method as edges

    config_lib.register_method(edges.METHOD)  # (again: the module may have been imported before)
    config = smoke_config(**{"method": "edges", "edges.scale": 2.0})
    config_lib.validate(config)  # the method name is known once registered
    assert config_lib.stage1_config(config) is None
    with pytest.raises(ValueError, match=r"^config.edges.scale=0.0 is invalid: positive.$"):
        config_lib.validate(smoke_config(**{"method": "edges", "edges.scale": 0.0}))
    config_lib.validate(smoke_config(**{"method": "pixel", "edges.scale": 0.0}))  # checked only when chosen
    trainer = train.build_trainer(config)
    assert isinstance(trainer.source, edges.Edges) and trainer.predictor.out_dim == 64
    batch = train.example_batch(config, trainer.sampler, config.optim.batch_size)
    batch["image"] = np.random.default_rng(0).integers(0, 256, batch["image"].shape, dtype=np.uint8)
    state = trainer.init(jax.random.key(0))
    for _ in range(2):
        state, metrics = trainer.step(state, trainer.frozen_params, trainer.place_batch(batch))
    assert int(state.step) == 2 and np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    monkeypatch.delitem(config_lib.METHODS, "edges")
    with pytest.raises(ValueError, match="config.method='edges'"):
        config_lib.validate(config)
