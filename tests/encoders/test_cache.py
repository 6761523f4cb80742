"""The teacher-target cache: the CLI writes it, training from it equals training with the teacher (bf16
tolerance) without loading the teacher, and configs whose images differ from the cached ones are refused."""

import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import REPO, read_metrics, smoke_config
from usjepa_jax import checkpointing, targets, train
from usjepa_jax.data.pipeline import build_dataset
from usjepa_jax.encoders import FrozenEncoder, export_encoder, load_encoder
from usjepa_jax.encoders import cache as teacher_cache

SHORT = {"optim.total_steps": 2, "log_every": 1}  # the cache tests' runs: two steps, each logged


def random_teacher(directory, seed):
    """A randomly initialised smoke-size teacher, exported as training exports encoders."""
    config = smoke_config(**SHORT)
    module = train.build_encoder(config.teacher.model)
    s = config.data.image_size
    params = module.init(jax.random.key(seed), jnp.zeros((1, s, s, 1)))["params"]
    export_encoder(directory, module, params, mean=0.5, std=0.5, image_size=s)
    return str(directory)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return random_teacher(tmp_path_factory.mktemp("teacher") / "encoder", seed=3)


@pytest.fixture(scope="module")
def cache_dir(teacher_dir, tmp_path_factory):
    """Written once through the CLI (train and val splits, 2 train shards of 40 + 24 images)."""
    out = tmp_path_factory.mktemp("cache") / "targets"
    result = subprocess.run([sys.executable, "-m", "usjepa_jax.encoders", "cache", "--config=configs/base.py:smoke",
                             f"--output={out}", f"--config.teacher.checkpoint={teacher_dir}", "--batch-size=16",
                             "--images-per-shard=40"], cwd=REPO, capture_output=True, text=True, timeout=300,
                             check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "img/s" in result.stderr and "use as config.teacher.cache" in result.stdout
    return str(out)


@pytest.fixture(scope="module")
def teacher_run(teacher_dir, tmp_path_factory):
    """The reference: 2 steps (+ validation) running the teacher every step."""
    workdir = tmp_path_factory.mktemp("with_teacher")
    train.train_and_evaluate(smoke_config(**SHORT | {"teacher.checkpoint": teacher_dir}), workdir)
    return read_metrics(workdir)


def test_cli_writes_the_teachers_embeddings_of_the_pipeline_images(cache_dir, teacher_dir):
    manifest = json.loads((Path(cache_dir) / teacher_cache.MANIFEST).read_text())
    teacher = load_encoder(teacher_dir, image_size=48)
    config = smoke_config(**SHORT)
    assert manifest["teacher"]["content_hash"] == teacher.content_hash
    assert manifest["data"] == teacher_cache.data_signature(config.data, config.seed)
    assert (manifest["tokens"], manifest["width"], manifest["normalized"]) == (36, teacher.width, False)
    assert manifest["splits"]["train"]["num_images"] == 64 and len(manifest["splits"]["train"]["shards"]) == 2
    assert manifest["splits"]["val"]["num_images"] == 16

    images = next(iter(build_dataset(config.data, global_batch_size=64, split="train", seed=config.seed,
                                     num_epochs=1, shuffle=False)))
    expected = np.asarray(teacher.embed(teacher.params, images["image"]))
    attach = teacher_cache.TeacherTargets(cache_dir, "train")
    attach = pickle.loads(pickle.dumps(attach))  # grain workers receive it pickled
    for i in (0, 39, 40, 63):  # both shards, their edges
        got = attach[i]
        assert got.dtype == jnp.bfloat16 and got.shape == (36, teacher.width)
        np.testing.assert_allclose(got.astype(np.float32), expected[i], rtol=1e-2, atol=1e-2)
    assert attach.map({"index": np.int32(5)})["teacher_targets"].shape == (36, teacher.width)


def test_training_from_the_cache_equals_training_with_the_teacher(cache_dir, teacher_run, tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the teacher must not be loaded or run when training from the cache")

    monkeypatch.setattr(targets, "load_encoder", forbidden)
    monkeypatch.setattr(FrozenEncoder, "embed", forbidden)
    workdir = tmp_path / "cached"
    train.train_and_evaluate(smoke_config(**SHORT | {"teacher.cache": cache_dir}), workdir)
    cached = read_metrics(workdir)
    for step in (1, 2):
        assert cached[step]["loss"] == pytest.approx(teacher_run[step]["loss"], rel=1e-2), step
    assert cached[2]["val_loss"] == pytest.approx(teacher_run[2]["val_loss"], rel=1e-2)

    # The teacher's content hash is in the checkpoint metadata, as for a loaded teacher.
    manager = checkpointing.make_manager(workdir / "checkpoints")
    meta = checkpointing.restore_meta(manager, manager.latest_step())
    manager.close()
    assert meta["teacher_hash"] == teacher_cache.TeacherCache.open(cache_dir).content_hash
    assert meta["teacher_cache"] == str(Path(cache_dir).absolute())


def test_normalized_cache_gives_the_same_loss(teacher_dir, cache_dir, tmp_path):
    """``--normalize`` stores layer-normalised targets; the loss then skips its own normalisation."""
    config = smoke_config(**SHORT | {"teacher.checkpoint": teacher_dir})
    manifest = teacher_cache.write_cache(config, tmp_path / "norm", splits=("train",), batch_size=32,
                                         normalize=True, progress=False)
    assert manifest["normalized"] and teacher_cache.TeacherCache.open(tmp_path / "norm").normalized
    raw = np.stack([teacher_cache.TeacherTargets(cache_dir, "train")[i] for i in range(8)])
    normed = np.stack([teacher_cache.TeacherTargets(tmp_path / "norm", "train")[i] for i in range(8)])
    np.testing.assert_allclose(normed.astype(np.float32),
                               train.objectives.layer_norm_no_affine(raw.astype(np.float32)), atol=5e-2)

    encoder = train.build_encoder(config.model)
    grid = (config.data.image_size // encoder.patch_size,) * 2
    sampler = train.MultiBlockMaskSampler.from_config(config.masks, grid)
    predictor = train.build_predictor(config, grid, manifest["width"])
    rng = np.random.default_rng(0)
    samples = [sampler(rng) for _ in range(8)]
    batch = {k: np.stack([m[k] for m in samples]) for k in samples[0]}
    batch["image"] = rng.integers(0, 255, (8, 48, 48, 1), dtype=np.uint8)
    ctx = jnp.zeros((8, sampler.context_len, encoder.width))
    params = {"encoder": encoder.init(jax.random.key(0), jnp.zeros(batch["image"].shape))["params"],
              "predictor": predictor.init(jax.random.key(1), ctx, batch["context_idx"], batch["context_valid"],
                                          batch["target_idx"], batch["target_valid"])["params"]}
    raw_source = targets.CachedTeacher(teacher_cache.TeacherCache.open(cache_dir), config.loss)
    norm_source = targets.CachedTeacher(teacher_cache.TeacherCache.open(tmp_path / "norm"), config.loss)
    loss_raw = train.make_loss_fn(config, encoder, predictor, raw_source)(params, None, None,
                                                                          dict(batch, teacher_targets=raw))
    loss_norm = train.make_loss_fn(config, encoder, predictor, norm_source)(params, None, None,
                                                                            dict(batch, teacher_targets=normed))
    assert float(loss_norm[0]) == pytest.approx(float(loss_raw[0]), rel=1e-2)


def test_augmentation_is_refused(cache_dir):
    config = smoke_config(**SHORT | {"teacher.cache": cache_dir, "data.augment.enabled": True})
    with pytest.raises(ValueError, match=r"data\.augment\.enabled"):
        train.train_and_evaluate(config, "/nonexistent/never/written")
    with pytest.raises(ValueError, match=r"config\.data\.augment\.enabled=True cannot be used"):  # below validate
        teacher_cache.check_compatible(config, teacher_cache.read_manifest(cache_dir))


@pytest.mark.parametrize("key,value", [("data.synthetic.vessel_prob", 0.9), ("data.image_size", 32),
                                       ("seed", 1), ("data.synthetic.image_size", 96)])
def test_other_images_are_refused_naming_the_key(cache_dir, key, value):
    with pytest.raises(ValueError, match=re.escape(f"config.{key}={value!r} differs")):
        train.train_and_evaluate(smoke_config(**SHORT | {"teacher.cache": cache_dir, key: value}), "/nonexistent/x")


def test_more_images_than_cached_are_refused(cache_dir):
    with pytest.raises(ValueError, match=r"config\.data\.num_train=128 exceeds"):
        train.train_and_evaluate(smoke_config(**SHORT | {"teacher.cache": cache_dir, "data.num_train": 128}), "/none/x")
    manifest = teacher_cache.read_manifest(cache_dir)
    del manifest["splits"]["val"]
    with pytest.raises(ValueError, match=r"no 'val' split.*eval_every=0"):
        teacher_cache.check_compatible(smoke_config(**SHORT | {"teacher.cache": cache_dir}), manifest)
    teacher_cache.check_compatible(smoke_config(**SHORT | {"teacher.cache": cache_dir, "eval_every": 0}), manifest)


def test_another_teacher_is_refused(cache_dir, tmp_path):
    other = random_teacher(tmp_path / "other", seed=4)
    with pytest.raises(ValueError, match=r"config\.teacher\.checkpoint=.* is not the teacher of"):
        train.train_and_evaluate(smoke_config(**SHORT | {"teacher.cache": cache_dir, "teacher.checkpoint": other}),
                                 "/none/x")
    with pytest.raises(FileNotFoundError, match="not a teacher cache"):
        train.train_and_evaluate(smoke_config(**SHORT | {"teacher.cache": str(tmp_path)}), "/none/x")
