"""The simulated task suite (evaluation/tasks.py): balanced labels, splits disjoint by anatomy, an oracle far above
chance and a constant encoder at chance, config.evals.tasks validation, per-task results of the runner."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import smoke_config
from usjepa_jax import config as config_lib
from usjepa_jax.data.seeding import derive_seed
from usjepa_jax.data.settings import SPLIT_STREAMS
from usjepa_jax.data.synthetic import SyntheticUltrasoundSource
from usjepa_jax.evaluation import baselines, dense, tasks
from usjepa_jax.evaluation.data import EVAL_STREAMS
from usjepa_jax.evaluation.probe import ProbeConfig, train_probe

FAST = ProbeConfig(lr=1e-2, max_epochs=100, patience=10, num_seeds=2)


def available_tasks():
    out = []
    for name in tasks.TASK_NAMES:
        try:
            tasks.task_class_names(name)
            out.append(name)
        except ValueError:
            pass
    return out


@pytest.fixture(scope="module", params=available_tasks())
def task_data(request):
    c = smoke_config(evals=dict(num_train=40 * len(tasks.task_class_names(request.param)), num_val=50,
                                num_test=50))
    return tasks.simulated_task_data(request.param, c.data, c.evals)


def test_labels_balanced_and_as_rendered(task_data):
    for split in (task_data.train, task_data.val, task_data.test):
        counts = np.bincount(split.label, minlength=task_data.num_classes)
        assert counts.max() - counts.min() <= 1, counts  # every class equally often (up to the remainder)
        assert split.segmentation.shape == split.image.shape[:3] and split.image.dtype == np.uint8
    assert task_data.num_classes == len(task_data.class_names) >= 2


def test_splits_disjoint_by_anatomy(task_data):
    seeds = {name: set(getattr(task_data, name).anatomy_seed.tolist()) for name in ("train", "val", "test")}
    assert sum(map(len, seeds.values())) == len(set.union(*seeds.values()))  # no anatomy in two splits
    # ... and none of them in the first pretraining anatomies of any split of the config's seed, nor in the other
    # tasks' streams or the speckle-invariance stream
    c = smoke_config()
    pretraining = {SyntheticUltrasoundSource(10_000, derive_seed(c.seed, k)).seeds(i)[0]
                   for k in SPLIT_STREAMS.values() for i in range(10_000)}
    assert not set.union(*seeds.values()) & pretraining
    others = {a for name in tasks.TASK_NAMES if name != task_data.name
              for a in tasks.anatomy_seeds(name, "train", 200, c.evals.seed)[0]}
    assert not set.union(*seeds.values()) & others
    assert EVAL_STREAMS["invariance"] not in tasks.TASK_STREAMS.values()


def test_splits_fixed():
    c = smoke_config(evals=dict(num_train=10, num_val=5, num_test=5))
    a = tasks.simulated_task_split("lesion", c.data, "val", 5, c.evals.seed)
    b = tasks.simulated_task_split("lesion", c.data, "val", 5, c.evals.seed)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)


def test_oracle_far_above_chance_and_constant_encoder_at_chance(task_data):
    """A probe on the phantom's tissue fractions reads the label; a constant encoder reads nothing."""
    from usjepa_jax.evaluation.runner import EvalContext, eval_linear_probe

    d = task_data
    size = d.train.image.shape[1]
    def oracle(split):
        if split.label_parameters is not None:  # what defines a label the segmentation does not hold
            return split.label_parameters  # (grade: parenchyma echogenicity and attenuation; margin: shape)
        return np.concatenate([dense.patch_fractions(split.segmentation, size),  # whole image
                               dense.patch_fractions(split.segmentation, size // 4)], 1)  # 4x4 cells

    x = {s: oracle(getattr(d, s)) for s in ("train", "val", "test")}
    probe = train_probe(x["train"], d.train.label, x["val"], d.val.label, d.num_classes, FAST)
    chance = 1 / d.num_classes
    m = probe.evaluate(x["test"], d.test.label)
    assert m["balanced_accuracy_mean"] > chance + 0.4, m

    @dataclasses.dataclass(frozen=True)
    class Constant:
        module: object
        params: None = None

        def embed(self, params, images):
            return jnp.ones((images.shape[0], 4, 8), jnp.float32)

    c = smoke_config()
    c.evals.probe.update(max_epochs=20, patience=5, num_seeds=2)
    ctx = EvalContext(Constant(module=type("M", (), {"patch_size": 8})()), c, d)
    m = eval_linear_probe(ctx)
    assert m["balanced_accuracy_mean"] == pytest.approx(chance)  # one class predicted for all


def test_patch_fractions():
    seg = np.zeros((1, 4, 4), np.uint8)
    seg[0, :2, :2] = 2
    f = dense.patch_fractions(seg, 2, num_codes=3).reshape(2, 2, 3)
    np.testing.assert_allclose(f[0, 0], [0, 0, 1])
    np.testing.assert_allclose(f[1, 1], [1, 0, 0])
    np.testing.assert_allclose(f.sum(-1), 1)


def test_oracle_features_choose_what_defines_the_label():
    from usjepa_jax.evaluation.data import Split

    seg = np.zeros((2, 16, 16), np.uint8)
    seg[0, :8, :8] = 2
    split = Split(np.zeros((2, 16, 16, 1), np.uint8), np.ones((2, 16, 16), bool), np.array([0, 1]), segmentation=seg)
    x = baselines.oracle_features(split, num_codes=3)  # per 8x8 patch (4 x 3) and whole image (3)
    assert x.shape == (2, 4 * 3 + 3)
    np.testing.assert_allclose(x[0, -3:], [0.75, 0, 0.25])
    params = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    split.label_parameters = params  # a task defined by simulator parameters: those alone
    np.testing.assert_array_equal(baselines.oracle_features(split, num_codes=3), params)


@pytest.mark.parametrize("value,match", [("lesoin", "lesoin"), ("", "at least one"),
                                         ("lesion,lesion", "twice")])
def test_tasks_config_validation(value, match):
    c = smoke_config(evals=dict(tasks=value))
    with pytest.raises(ValueError, match=f"config.evals.tasks.*{match}"):
        config_lib.validate(c)


def test_runner_keys_results_by_task(tmp_path):
    from usjepa_jax.evaluation.runner import run_evaluators
    from usjepa_jax.evaluation.features import random_encoder
    from usjepa_jax.evaluation.runner import by_task, flat

    names = available_tasks()[:2]
    c = smoke_config(evals=dict(tasks=",".join(names), evaluators="knn,speckle_invariance", num_train=20,
                                num_val=10, num_test=10))
    results, figures = run_evaluators(random_encoder(c.model, c.data.image_size), c, out_dir=tmp_path)
    nested = by_task(results)
    assert set(nested) == set(names) | {"all"}
    assert all("knn/accuracy" in nested[t] for t in names) and "speckle_invariance/ratio" in nested["all"]
    assert flat(nested) == results
    assert all((tmp_path / t / "pca_features.png").is_file() for t in names)
