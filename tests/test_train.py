"""The trainer end to end on the smoke config: frozen teacher, sharding equivalence, exact resume, CLI, errors."""

import json
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base, salt_teacher
from tests.conftest import REPO, encoder_params, read_metrics, smoke_config, tensorboard_scalars
from usjepa_jax import config as config_lib
from usjepa_jax import layout, sharding, targets, train
from usjepa_jax.encoders import load_encoder


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A stage-1 pixel teacher trained once for the module (the smoke config's stage 1)."""
    workdir = tmp_path_factory.mktemp("stage1")
    train.train_and_evaluate(config_lib.stage1_config(smoke_config()), workdir)
    return str(workdir / layout.ENCODER_DIR)


def test_teacher_is_frozen_and_gets_no_gradient(teacher_dir, tmp_path):
    before = load_encoder(teacher_dir)
    train.train_and_evaluate(smoke_config(**{"teacher.checkpoint": teacher_dir}), tmp_path)
    after = load_encoder(teacher_dir)
    assert before.content_hash == after.content_hash
    jax.tree.map(np.testing.assert_array_equal, before.params, after.params)

    # The loss's gradient with respect to the teacher parameters is exactly zero.
    config = smoke_config(**{"teacher.checkpoint": teacher_dir})
    encoder = train.build_encoder(config.model)
    grid = (config.data.image_size // encoder.patch_size,) * 2
    sampler = train.MultiBlockMaskSampler.from_config(config.masks, grid)
    predictor = train.build_predictor(config, grid, before.width)
    batch = train.example_batch(config, sampler, 2)
    batch["image"] = np.random.default_rng(0).integers(0, 255, batch["image"].shape, dtype=np.uint8)
    ctx = jnp.zeros((2, sampler.context_len, encoder.width))
    params = {"encoder": encoder.init(jax.random.key(0), jnp.zeros(batch["image"].shape))["params"],
              "predictor": predictor.init(jax.random.key(1), ctx, batch["context_idx"], batch["context_valid"],
                                          batch["target_idx"], batch["target_valid"])["params"]}
    loss_fn = train.make_loss_fn(config, encoder, predictor, targets.FrozenTeacher(before, config.loss))
    teacher_grad = jax.grad(lambda t: loss_fn(params, None, t, batch)[0])(before.params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(teacher_grad))


TWO_STEPS = {"optim.total_steps": 2, "log_every": 1}


@pytest.fixture(scope="module")
def single_device_run(teacher_dir, tmp_path_factory):
    """Two steps on one device against the module's teacher, trained once: the reference of the sharded runs,
    and a finished run that another teacher may not resume."""
    workdir = tmp_path_factory.mktemp("single_device")
    train.train_and_evaluate(smoke_config(**{"teacher.checkpoint": teacher_dir, **TWO_STEPS, "mesh.data": 1,
                                             "mesh.fsdp": 1}), workdir)
    return workdir


@pytest.mark.parametrize("mesh,strategy", [((8, 1), "replicate"), ((2, 4), "fsdp")])
def test_sharded_steps_match_single_device(teacher_dir, single_device_run, tmp_path, mesh, strategy):
    sharded = smoke_config(**{"teacher.checkpoint": teacher_dir, **TWO_STEPS, "mesh.data": mesh[0],
                              "mesh.fsdp": mesh[1], "sharding.strategy": strategy})
    train.train_and_evaluate(sharded, tmp_path / "sharded")
    m1, m8 = read_metrics(single_device_run), read_metrics(tmp_path / "sharded")
    for step in (1, 2):
        assert m8[step]["loss"] == pytest.approx(m1[step]["loss"], rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
                 encoder_params(single_device_run), encoder_params(tmp_path / "sharded"))


FINE_BUCKETS = {"masks.pad_step": 1, "masks.pad_buckets": 50}  # many padding buckets: shapes change step to step


@pytest.mark.parametrize("method,overrides", [("usjepa", {"mesh.data": 8}), ("ijepa", {}), ("usjepa", FINE_BUCKETS)],
                         ids=["usjepa_8_devices", "ijepa", "usjepa_fine_buckets"])
def test_kill_and_resume_is_exact(teacher_dir, tmp_path, monkeypatch, method, overrides):
    config = smoke_config(**{"teacher.checkpoint": teacher_dir, "method": method, "log_every": 1,
                             "checkpoint.every": 2, "optim.total_steps": 4, **overrides})
    shapes, real_fit = [], train.masks.fit_batch

    def recording_fit(batch, context_len, target_len):
        shapes.append((context_len, target_len))
        return real_fit(batch, context_len, target_len)

    monkeypatch.setattr(train.masks, "fit_batch", recording_fit)
    train.train_and_evaluate(config, tmp_path / "straight")
    if overrides == FINE_BUCKETS:
        assert len(set(shapes)) > 1  # the step shape changes within this short run, and resume stays exact

    real_global_batch, calls = train.sharding.global_batch, []

    def dies_at_step_3(batch, mesh):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated kill at step 3")
        return real_global_batch(batch, mesh)

    monkeypatch.setattr(train.sharding, "global_batch", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(config, tmp_path / "resumed")
    monkeypatch.setattr(train.sharding, "global_batch", real_global_batch)
    train.train_and_evaluate(config, tmp_path / "resumed")

    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    for step in (1, 2, 3, 4):
        assert resumed[step]["loss"] == straight[step]["loss"], step
    jax.tree.map(np.testing.assert_array_equal, encoder_params(tmp_path / "straight"),
                 encoder_params(tmp_path / "resumed"))
    if method == "ijepa":  # its EMA encoder is exported next to the student, and resumes exactly as well
        from usjepa_jax.evaluation.encoder_specs import run_encoder

        ema = {run: run_encoder(config, tmp_path / run, "ema") for run in ("straight", "resumed")}
        jax.tree.map(np.testing.assert_array_equal, ema["straight"].params, ema["resumed"].params)
        assert ema["straight"].content_hash != load_encoder(tmp_path / "straight").content_hash  # not the student
    else:
        assert not (tmp_path / "straight" / layout.EMA_ENCODER_DIR).exists()


def test_resume_with_another_teacher_is_refused(teacher_dir, single_device_run, tmp_path):
    shutil.copytree(single_device_run, tmp_path / "run")  # a run trained against teacher_dir (the copy: ours)
    other = tmp_path / "other_teacher"
    teacher = load_encoder(teacher_dir)
    from usjepa_jax.encoders import export_encoder
    export_encoder(other, teacher.module, jax.tree.map(lambda x: x + 1.0, teacher.params), mean=0.5, std=0.5)
    with pytest.raises(ValueError, match="Cannot resume"):
        train.train_and_evaluate(smoke_config(**{"teacher.checkpoint": str(other), "optim.total_steps": 4}),
                                 tmp_path / "run")


def test_pixel_method_learns(tmp_path):
    config = smoke_config(**{"method": "pixel", "optim.total_steps": 30, "log_every": 5,
                             "optim.warmup_steps": 3})
    train.train_and_evaluate(config, tmp_path)
    metrics = read_metrics(tmp_path)
    assert metrics[30]["loss"] < metrics[5]["loss"]
    assert (tmp_path / layout.LOSS_CURVE_FILE).stat().st_size > 1000


def test_main_smoke_runs_both_stages(tmp_path):
    result = subprocess.run([sys.executable, "-m", "usjepa_jax.main", "--config=configs/base.py:smoke",
                             f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "teacher" / "encoder" / "model.json").exists()
    assert (tmp_path / "encoder" / "model.json").exists()
    assert "Stage 2" in result.stderr
    # The resolved config of each stage is saved (evaluate reads it); TensorBoard shows both runs' curves.
    assert config_lib.run_config(tmp_path).teacher.checkpoint == str(tmp_path / "teacher" / "encoder")
    assert config_lib.run_config(tmp_path / "teacher").method == "pixel"
    for run in (tmp_path, tmp_path / "teacher"):
        logged = {step: record["loss"] for step, record in read_metrics(run).items() if "loss" in record}
        assert len(logged) >= 2 and tensorboard_scalars(run)["loss"] == pytest.approx(logged)
    assert "k-NN monitor: accuracy" in result.stderr  # configs/base.py:smoke runs it at its last step
    # ... and the evaluation CLI on the finished run.
    result = subprocess.run([sys.executable, "-m", "usjepa_jax.evaluate", "--config=configs/base.py:smoke",
                             f"--workdir={tmp_path}", "--config.evals.evaluators=knn,speckle_invariance"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "results.json").read_text())["student:latest"]["metrics"]
    assert 0 <= metrics["lesion"]["knn/accuracy"] <= 1  # keyed by task; the task-free evaluators under "all"
    assert 0 <= metrics["all"]["speckle_invariance/patch_anatomy_variance_fraction"] <= 1


def test_ijepa_stage1_leaves_its_ema_encoder_as_the_teacher(tmp_path):
    """``teacher.stage1='ijepa'``: stage 1 is an I-JEPA run in workdir/teacher and the student trains against its
    EMA encoder, which is also what ``--encoders=teacher`` evaluates when the config names no checkpoint."""
    from usjepa_jax.evaluation.encoder_specs import encoder_path

    result = subprocess.run([sys.executable, "-m", "usjepa_jax.main", "--config=configs/base.py:smoke",
                             f"--workdir={tmp_path}", "--config.teacher.stage1=ijepa", "--config.evals.knn.every=0"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    teacher = tmp_path / "teacher" / "encoder_ema"
    assert (teacher / "model.json").exists() and (tmp_path / "encoder" / "model.json").exists()
    assert config_lib.run_config(tmp_path / "teacher").method == "ijepa"
    assert config_lib.run_config(tmp_path).teacher.checkpoint == str(teacher)
    config = base.get_config("smoke")
    config.teacher.stage1 = "ijepa"
    assert encoder_path(config, tmp_path, "teacher") == teacher


def test_config_typo_fails_before_compute(tmp_path):
    result = subprocess.run([sys.executable, "-m", "usjepa_jax.main", "--config=configs/base.py:smoke",
                             f"--workdir={tmp_path}", "--config.optim.lr_peek=1e-3"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2  # a user error (usjepa_jax/cli.py): one line naming the flag, no traceback
    assert result.stderr.strip().splitlines() == ["error: --config.optim.lr_peek: the config has no key 'lr_peek' "
                                                  "(did you mean 'lr_peak'?)"]
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("key,value,message", [
    ("method", "mea", "config.method='mea'"),
    ("loss.kind", "huber", "config.loss.kind='huber'"),
    ("model.variant", "Q/16", "config.model.variant"),
    ("data.image_size", 50, "config.data.image_size=50"),
    ("optim.warmup_steps", 10, "config.optim.warmup_steps=10"),
    ("sharding.strategy", "zero3", "config.sharding.strategy"),
    ("teacher.stage1", "mae", "config.teacher.stage1='mae'"),
])
def test_bad_config_values_name_the_key(key, value, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        config_lib.validate(smoke_config(**{key: value}))


def test_nan_loss_stops_with_message_and_keeps_last_checkpoint(teacher_dir, tmp_path):
    config = smoke_config(**{"teacher.checkpoint": teacher_dir, "optim.total_steps": 4, "checkpoint.every": 2,
                             "log_every": 1})
    config.optim.lr_start = config.optim.lr_peak = config.optim.lr_end = 1e30  # blows up after one update
    with pytest.raises(FloatingPointError, match="last good checkpoint"):
        train.train_and_evaluate(config, tmp_path)
    assert not (tmp_path / "encoder").exists()


def test_validation_loss_keeps_the_best_encoder(tmp_path):
    config = smoke_config(**{"method": "pixel", "optim.total_steps": 4, "eval_every": 2})
    train.train_and_evaluate(config, tmp_path)
    records = [json.loads(line) for line in (tmp_path / layout.METRICS_FILE).read_text().splitlines()]
    val = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    assert sorted(val) == [2, 4]
    best_step = min(val, key=val.get)
    best = json.loads((tmp_path / layout.BEST_ENCODER_DIR / "model.json").read_text())["source"]
    assert best["step"] == best_step and best["val_loss"] == pytest.approx(val[best_step])
    assert train.best_val_loss(tmp_path) == pytest.approx(min(val.values()))
    assert config_lib.run_config(tmp_path).to_dict() == json.loads(config.to_json_best_effort())  # config.json
    # One load_encoder for all of a run's encoders: the workdir (its encoder/), a train checkpoint's student.
    final = load_encoder(tmp_path)
    assert final.path == str(tmp_path / layout.ENCODER_DIR)
    assert load_encoder(tmp_path / layout.CHECKPOINTS_DIR / "4").content_hash == final.content_hash
    assert load_encoder(tmp_path / layout.CHECKPOINTS_DIR / "2").content_hash != final.content_hash


def test_stage1_config_takes_the_teacher_settings():
    config = base.get_config()
    stage1 = config_lib.stage1_config(config)
    assert stage1.method == "pixel"
    assert stage1.model.depth == config.teacher.model.depth and stage1.predictor.width == config.teacher.decoder.width
    assert stage1.optim.total_steps == config.teacher.optim.total_steps
    assert stage1.loss.normalize_pixels is False  # configs/base.py: raw-pixel stage 1 (see its comment)
    assert config.loss.normalize_pixels is True  # the student's own config is untouched
    config.teacher.pixel_target, config.teacher.lowpass_sigma = "lowpass", 1.5  # the teacher options
    stage1 = config_lib.stage1_config(config)
    assert (stage1.loss.pixel_target, stage1.loss.lowpass_sigma) == ("lowpass", 1.5)
    config.teacher.stage1 = "ijepa"  # a short I-JEPA run with the same teacher settings; its EMA encoder teaches
    stage1 = config_lib.stage1_config(config)
    assert stage1.method == "ijepa" and stage1.model.depth == config.teacher.model.depth
    assert (stage1.predictor.width, stage1.optim.total_steps) == (config.teacher.decoder.width, 150)
    # configs/salt_teacher.py is that stage 1 as a run of its own.
    assert salt_teacher.get_config().to_dict() == config_lib.stage1_config(base.get_config()).to_dict()


def test_knn_monitor_logs_what_a_direct_evaluation_gives(tmp_path):
    """config.evals.knn.every: k-NN accuracy during training (metrics.jsonl, on_log, the loss-curve figure) equals
    the monitor run afterwards on the exported encoder."""
    from usjepa_jax.evaluation.monitor import KnnMonitor

    config = smoke_config(**{"method": "pixel", "optim.total_steps": 4, "evals.knn.every": 2})
    seen = []
    train.train_and_evaluate(config, tmp_path, on_log=lambda run, record: seen.append((run, record)))
    metrics = read_metrics(tmp_path)
    assert [s for s in sorted(metrics) if "knn_accuracy" in metrics[s]] == [2, 4]
    assert all(run == str(tmp_path) for run, _ in seen)
    assert any("knn_accuracy" in r for _, r in seen) and any("loss" in r for _, r in seen)
    monitor = KnnMonitor(config, train.build_encoder(config.model), jax.sharding.Mesh(jax.devices()[:1], ("data",)))
    again = monitor(encoder_params(tmp_path))
    assert again["knn_accuracy"] == pytest.approx(metrics[4]["knn_accuracy"])
    assert 0.0 <= again["knn_macro_f1"] <= 1.0
    assert (tmp_path / layout.LOSS_CURVE_FILE).is_file()
    # Rerunning the finished run trains nothing and reports the last logged values (a notebook's "run all").
    again = train.train_and_evaluate(config, tmp_path)
    assert again["loss"] == pytest.approx(metrics[4]["loss"]) and again["knn_accuracy"] == metrics[4]["knn_accuracy"]


def test_live_loss_plot_collects_and_draws_outside_a_notebook():
    from usjepa_jax.visualize import LiveLossPlot

    plot = LiveLossPlot()
    for step in (1, 2, 3):
        plot("/runs/teacher", {"step": step, "loss": 1.0 / step})
        plot("/runs/student", {"step": step, "loss": 2.0 / step, "knn_accuracy": 0.2 * step})
    assert plot.series["/runs/student"]["knn_accuracy"] == {1: 0.2, 2: 0.4, 3: pytest.approx(0.6)}
    assert len(plot.figure().axes) == 3  # two runs, the student's with a k-NN axis


@pytest.mark.parametrize("shared_context", [False, True])
def test_bucketed_step_equals_the_unpadded_computation(shared_context):
    """The loss and gradients of a batch at full padding, cut to its padding bucket (masks.fit_batch), and computed
    without any padding (each (image, target block) sequence on its own, exact lengths) agree.

    The per-sequence reference needs a loss that splits into per-sequence terms, so it runs without
    ``loss.standardize_targets`` (its statistics pool the batch); with it, the padded and the cut batch are
    compared with each other at the end. With ``predictor.shared_context`` the per-sequence reference is the same:
    a block's predictions depend on the context and that block only."""
    from usjepa_jax import masks
    from usjepa_jax.encoders import FrozenEncoder

    config = smoke_config(**{"masks.num_targets": 2, "loss.standardize_targets": False,
                             "predictor.shared_context": shared_context, **FINE_BUCKETS})
    module = train.build_encoder(config.teacher.model)
    s = config.data.image_size
    teacher = FrozenEncoder(module, module.init(jax.random.key(1), jnp.zeros((1, s, s, 1)))["params"], 1,
                            config.data.mean, config.data.std, "<random>", "random")
    source = targets.FrozenTeacher(teacher, config.loss)
    trainer = train.build_trainer(config, source)
    loss_fn = train.make_loss_fn(config, trainer.encoder, trainer.predictor, source)
    rng = np.random.default_rng(0)
    samples = [trainer.sampler(rng) for _ in range(2)]
    full = {k: np.stack([m[k] for m in samples]) for k in samples[0]}
    full["image"] = rng.integers(0, 256, (2, s, s, 1), dtype=np.uint8)
    counts = masks.valid_counts(full)
    lengths = trainer.sampler.batch_lengths(counts["context"], counts["target"])
    assert lengths[0] < trainer.sampler.context_len  # the bucket really cuts padding
    fitted = masks.fit_batch(full, *lengths)
    params = trainer.init(jax.random.key(0)).params
    grad_fn = jax.value_and_grad(lambda p, b: loss_fn(p, None, teacher.params, b)[0])

    references = []  # one sequence per (image, block), no padding anywhere
    for b in range(2):
        c = int(full["context_valid"][b].sum())
        for m in range(2):
            t = int(full["target_valid"][b, m].sum())
            one = dict(image=full["image"][b:b + 1], context_idx=full["context_idx"][b:b + 1, :c],
                       context_valid=full["context_valid"][b:b + 1, :c],
                       target_idx=full["target_idx"][b:b + 1, m:m + 1, :t],
                       target_valid=full["target_valid"][b:b + 1, m:m + 1, :t])
            references.append(grad_fn(params, one))
    ref_loss = np.mean([r[0] for r in references])
    ref_grads = jax.tree.map(lambda *g: np.mean(g, axis=0), *[r[1] for r in references])
    for batch in (full, fitted):
        loss, grads = grad_fn(params, batch)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, ref_grads)

    config.loss.standardize_targets = True  # configs/base.py's loss: padding must stay out of its statistics too
    standardized = targets.FrozenTeacher(teacher, config.loss)
    std_loss_fn = train.make_loss_fn(config, trainer.encoder, trainer.predictor, standardized)
    std_grad_fn = jax.value_and_grad(lambda p, b: std_loss_fn(p, None, teacher.params, b)[0])
    (loss_full, grads_full), (loss_fit, grads_fit) = std_grad_fn(params, full), std_grad_fn(params, fitted)
    np.testing.assert_allclose(loss_fit, loss_full, rtol=1e-5)
    assert abs(float(loss_full) - float(ref_loss)) > 1e-3  # the switch is on: not the unstandardised loss
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads_fit, grads_full)


def test_micro_batches_hold_at_least_an_image_per_device():
    assert train.micro_batches(64, 1, 32) == 32  # configs/base.py on one CPU
    assert train.micro_batches(64, 8, 32) == 8  # on 8 devices: one image per device in each micro-batch
    assert train.micro_batches(64, 8, 4) == 4 and train.micro_batches(16, 32, 8) == 1


def random_batch(trainer: train.Trainer) -> dict[str, np.ndarray]:
    """A host batch of the trainer's global batch size: sampled masks, random images."""
    config, rng = trainer.config, np.random.default_rng(0)
    samples = [trainer.sampler(rng) for _ in range(config.optim.batch_size)]
    batch = {k: np.stack([m[k] for m in samples]) for k in samples[0]}
    s = config.data.image_size
    batch["image"] = rng.integers(0, 256, (config.optim.batch_size, s, s, 1), dtype=np.uint8)
    return batch


@pytest.mark.parametrize("method", ["usjepa", "pixel"])
def test_accumulated_step_equals_the_whole_batch(method):
    """``optim.grad_accum_steps``: the batch as sequential micro-batches gives the whole batch's loss and gradient,
    also with ``loss.standardize_targets`` (its statistics pool the whole batch, not a micro-batch), and with
    ``optim.micro_pad_buckets`` (rows sorted by context size, each micro-batch cut to its own length)."""
    from usjepa_jax.encoders import FrozenEncoder

    config = smoke_config(**{"method": method, "loss.standardize_targets": True})
    source = None
    if method == "usjepa":
        module, s = train.build_encoder(config.teacher.model), config.data.image_size
        teacher = FrozenEncoder(module, module.init(jax.random.key(1), jnp.zeros((1, s, s, 1)))["params"], 1,
                                config.data.mean, config.data.std, "<random>", "random")
        source = targets.FrozenTeacher(teacher, config.loss)
    trainer = train.build_trainer(config, source)
    batch = random_batch(trainer)
    params = trainer.init(jax.random.key(0)).params
    # 4 micro-batches of 2 rows: after sorting, their largest contexts (14-22 of 32 slots) fall in different
    # lengths of {8, 16, 24, 32}, so the switch cuts them differently and below the batch's length.
    counts = np.sort(batch["context_valid"].sum(-1)).reshape(4, 2).max(-1)
    assert len(set(np.searchsorted([8, 16, 24, 32], counts))) > 1 and counts.max() <= 24
    results = []
    for accum, buckets in ((1, 1), (4, 1), (4, 4)):
        config.optim.grad_accum_steps, config.optim.micro_pad_buckets = accum, buckets
        loss_and_grads = jax.jit(train.make_loss_and_grads(config, trainer.encoder, trainer.predictor,
                                                           trainer.source))
        args = (params, None, trainer.frozen_params, batch)
        assert (" conditional(" in loss_and_grads.lower(*args).compile().as_text()) == (buckets > 1)
        results.append(loss_and_grads(*args))
    (loss, grads), *accumulated = results
    for accumulated_loss, accumulated_grads in accumulated:
        np.testing.assert_allclose(accumulated_loss, loss, rtol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), accumulated_grads, grads)


def loop_all_reduce_axes(hlo_text: str) -> list[set[str]]:
    """The mesh axes each all-reduce inside the compiled step's loop bodies (``while`` ... ``body=``) reduces over,
    as XLA names them: ``axis_0`` is the mesh's first axis, ``data``."""
    bodies = {m.group(1) for m in re.finditer(r"body=%?([\w.-]+)", hlo_text)}
    axes, current = [], None
    for line in hlo_text.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            current = line.split(" ")[0].lstrip("%")
        elif current in bodies and re.search(r" all-reduce(-start)?\(", line):
            groups = re.search(r"replica_groups=mesh\[[^]]*\] \{([^}]*)\}", line)
            axes.append(set(re.findall(r"'(\w+)'", groups.group(1))) if groups else {"?"})
    return axes


@pytest.mark.parametrize("mesh,strategy", [((4, 1), "replicate"), ((2, 2), "fsdp")])
def test_sharded_accumulation_sums_the_gradient_once(mesh, strategy):
    """Data-parallel groups add up their own micro-batches' gradients and all-reduce once, after the loop (not once
    per micro-batch): the same loss and gradient as the whole batch on one device."""
    config = smoke_config(**{"method": "pixel", "sharding.strategy": strategy})
    trainer = train.build_trainer(config)
    batch = random_batch(trainer)
    params = trainer.init(jax.random.key(0)).params
    whole = jax.jit(train.make_loss_and_grads(config, trainer.encoder, trainer.predictor, trainer.source))
    loss, grads = whole(params, None, None, batch)

    config.optim.grad_accum_steps = 2
    device_mesh = sharding.make_mesh(*mesh)
    accumulated = jax.jit(train.make_loss_and_grads(config, trainer.encoder, trainer.predictor, trainer.source,
                                                    device_mesh),
                          in_shardings=(None, None, None, sharding.batch_sharding(device_mesh)))
    params = jax.device_put(params, sharding.replicated(device_mesh))
    hlo = accumulated.lower(params, None, None, batch).compile().as_text()
    loop_axes = loop_all_reduce_axes(hlo)
    assert all("axis_0" not in axes for axes in loop_axes), loop_axes  # nothing crosses the data axis per micro-batch
    assert loop_axes == ([] if strategy == "replicate" else [{"axis_1"}])  # fsdp: its own axis, as without groups
    if strategy == "replicate":  # on CPU: the whole gradient as one flat array, one all-reduce
        size = sum(x.size for x in jax.tree.leaves(params))
        assert any(f"f32[{size}]" in line for line in hlo.splitlines() if re.search(r" all-reduce(-start)?\(", line))
    accumulated_loss, accumulated_grads = accumulated(params, None, None, batch)
    np.testing.assert_allclose(accumulated_loss, loss, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), accumulated_grads, grads)


def test_profile_flag_writes_a_trace_of_the_first_steps(tmp_path):
    config = smoke_config(**{"method": "pixel", "optim.total_steps": 3, "profile_steps": 2, "evals.knn.every": 0})
    train.train_and_evaluate(config, tmp_path)
    traces = list((tmp_path / layout.PROFILE_DIR).rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
