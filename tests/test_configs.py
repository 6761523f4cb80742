"""Every config is a first-class citizen: it validates, and its full train state and train step build abstractly
(``jax.eval_shape``, no compute), the accelerator configs included, with each shared variant."""

from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from usjepa_jax import config as config_lib
from usjepa_jax import targets, train
from usjepa_jax.encoders import FrozenEncoder

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.py") if p.name != "__init__.py")
ARGS = {"folder.py": "/data/prepared"}  # configs with positional words


def load(name: str, variant: str | None):
    arg = ",".join(w for w in (ARGS.get(name), variant) if w)
    return config_lib.sibling_config(str(REPO / "configs" / name), name[:-3]).get_config(arg or None)


def abstract_teacher(config):
    """A frozen teacher of ``config.teacher.model`` with abstract parameters (nothing is loaded or computed)."""
    module = train.build_encoder(config.teacher.model)
    s = config.data.image_size
    params = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, s, s, 1), jnp.float32))["params"]
    encoder = FrozenEncoder(module, None, 1, config.data.mean, config.data.std, "<abstract>", "-")
    return targets.FrozenTeacher(encoder, config.loss), params


def check_variant(run, plain, variant: str, trainer) -> None:
    """What ``config.apply_variants`` promises of ``variant``, seen in the run's config and its built trainer."""
    o = run.optim
    assert (o.batch_size, o.total_steps, o.warmup_steps, o.grad_accum_steps) == (8, 4, 1, 1)  # 4 steps of 8
    assert run.model.dtype == "float32" and not run.expect_accelerator
    assert (run.data.num_train, run.data.worker_count) == (64, 0)  # (a folder config holds out by file: num_val)
    assert trainer.encoder.dtype == jnp.float32
    s, p = run.data.image_size, trainer.encoder.patch_size
    assert trainer.sampler.grid_size == (s // p, s // p)  # the masks on the encoder's patch grid
    if variant == "smoke":  # everything tiny: a mu/8 encoder at 48 px, a 1-block predictor
        assert s == 48 and (trainer.encoder.width, trainer.encoder.depth, p) == (32, 1, 8)
        assert (trainer.predictor.width, trainer.predictor.depth) == (32, 1)
        assert trainer.num_params < 100_000
    else:  # runlocal: the config's own models and input, only the run made small
        assert run.model.variant == plain.model.variant and run.model.depth == plain.model.depth
        assert s == plain.data.image_size and run.predictor.to_dict() == plain.predictor.to_dict()


@pytest.mark.parametrize("variant", [None, "smoke", "runlocal"])
@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_its_train_state_and_step(name, variant):
    config = load(name, variant)
    config_lib.validate(config)
    runs = [config]
    stage1 = config_lib.stage1_config(config)
    if stage1 is not None:
        runs.insert(0, stage1)  # SALT stage 1 is a run of its own
    plain = load(name, None)
    plain_runs = [config_lib.stage1_config(plain), plain] if stage1 is not None else [plain]
    for run, plain_run in zip(runs, plain_runs, strict=True):
        source, frozen = abstract_teacher(run) if run.method == "usjepa" else (None, None)
        trainer = train.build_trainer(run, source)  # mesh, models, masks, abstract state, shardings
        assert trainer.num_params > 0
        if variant is not None:
            check_variant(run, plain_run, variant, trainer)
        if variant is None and run is config:  # the step itself (a variant changes sizes, not the code path)
            batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                 train.example_batch(run, trainer.sampler, run.optim.batch_size))
            state, metrics = jax.eval_shape(trainer.step, trainer.abstract_state, frozen, batch)
            shapes = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)  # noqa: E731
            assert shapes(state) == shapes(trainer.abstract_state)
            assert {"loss", "grad_norm", "lr"} <= set(metrics) and metrics["loss"].shape == ()


def test_unknown_variant_names_the_config():
    with pytest.raises(ValueError, match=r"Unknown config variant 'smok' in paper_vitb16.py \(known: smoke"):
        load("paper_vitb16.py", "smok")
