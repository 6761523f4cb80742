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


@pytest.mark.parametrize("variant", [None, "smoke", "runlocal"])
@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_its_train_state_and_step(name, variant):
    config = load(name, variant)
    config_lib.validate(config)
    runs = [config]
    if config.method == "usjepa" and not config.teacher.checkpoint:
        runs.insert(0, config_lib.stage1_config(config))  # SALT stage 1 is a run of its own
    for run in runs:
        source, frozen = abstract_teacher(run) if run.method == "usjepa" else (None, None)
        trainer = train.build_trainer(run, source)  # mesh, models, masks, abstract state, shardings
        assert trainer.num_params > 0
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
