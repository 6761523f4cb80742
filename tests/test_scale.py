"""Scale-out on CPU: a real 2-process run, restore on other device counts, SIGTERM, bfloat16."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import portpicker
import pytest

from tests.conftest import encoder_params, read_metrics, smoke_config
from usjepa_jax import checkpointing, train

REPO = Path(__file__).resolve().parents[1]
PIXEL = {"method": "pixel", "optim.total_steps": 3, "log_every": 1, "checkpoint.every": 3}


def test_two_processes_match_one_process_with_the_same_devices(tmp_path):
    """Also with 2 micro-batches: each data-parallel group sums its own gradients, one all-reduce between the
    processes per step (train.make_loss_and_grads)."""
    overrides = {**PIXEL, "optim.grad_accum_steps": 2}
    port = portpicker.pick_unused_port()
    # Two fake devices per process (the helper sets them); no compilation cache (tests/conftest.py): both processes
    # compile the same programs at the same moment, nothing to share.
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")}
    procs = [subprocess.Popen([sys.executable, str(REPO / "tests/distributed_worker.py"), str(i), "2",
                               str(port), str(tmp_path / "multi"), json.dumps(overrides)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]

    train.train_and_evaluate(smoke_config(**overrides, **{"mesh.data": 4}), tmp_path / "single")
    multi, single = read_metrics(tmp_path / "multi"), read_metrics(tmp_path / "single")
    for step in (1, 2, 3):
        assert multi[step]["loss"] == pytest.approx(single[step]["loss"], rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
                 encoder_params(tmp_path / "multi"), encoder_params(tmp_path / "single"))


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    """A 3-step run on 4 devices (2 data x 2 fsdp), trained once for the restores below."""
    workdir = tmp_path_factory.mktemp("fsdp_4_devices")
    train.train_and_evaluate(smoke_config(**PIXEL, **{"mesh.data": 2, "mesh.fsdp": 2, "sharding.strategy": "fsdp"}),
                             workdir)
    return workdir


@pytest.mark.parametrize("devices", [1, 8])
def test_checkpoint_from_4_devices_restores_on_other_device_counts(fsdp_run, devices):
    target = smoke_config(**PIXEL, **{"mesh.data": devices})
    trainer = train.build_trainer(target, None)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            trainer.abstract_state, trainer.state_shardings)
    manager = checkpointing.make_manager(fsdp_run / "checkpoints")
    state, data_state, meta = checkpointing.restore(manager, 3, abstract)
    manager.close()
    assert int(state.step) == 3 and meta["method"] == "pixel" and data_state
    leaf = jax.tree.leaves(state.params)[0]
    assert len(leaf.sharding.device_set) == devices
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params["encoder"]), encoder_params(fsdp_run))



def test_a_checkpoint_of_another_model_is_refused_naming_the_parameters(fsdp_run):
    trainer = train.build_trainer(smoke_config(**PIXEL, **{"model.depth": 2}), None)  # the run's encoder has 1
    manager = checkpointing.make_manager(fsdp_run / "checkpoints")
    with pytest.raises(ValueError, match=r"does not fit this run's train state(.|\n)*in this run but not saved "
                                         r"\(\d+\): params/encoder/encoder/blocks_1/"):
        checkpointing.restore(manager, 3, trainer.abstract_state)
    manager.close()


def test_sigterm_saves_and_the_rerun_resumes_exactly(tmp_path, monkeypatch):
    config = smoke_config(**{"method": "pixel", "optim.total_steps": 5, "log_every": 1, "checkpoint.every": 100})
    train.train_and_evaluate(config, tmp_path / "straight")

    real_place, calls = train.Trainer.place_batch, []

    def terminated_during_step_2(self, batch):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # what Cloud TPU / SLURM send before preemption
        return real_place(self, batch)

    monkeypatch.setattr(train.Trainer, "place_batch", terminated_during_step_2)
    with pytest.raises(train.Preempted, match="step 2"):
        train.train_and_evaluate(config, tmp_path / "preempted")
    assert checkpointing.make_manager(tmp_path / "preempted" / "checkpoints").latest_step() == 2
    monkeypatch.setattr(train.Trainer, "place_batch", real_place)
    train.train_and_evaluate(config, tmp_path / "preempted")
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "preempted")
    assert [resumed[s]["loss"] for s in range(1, 6)] == [straight[s]["loss"] for s in range(1, 6)]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed after the run


def test_bfloat16_compute_trains(tmp_path):
    config = smoke_config(**{"method": "pixel", "model.dtype": "bfloat16", "optim.total_steps": 6,
                             "log_every": 1, "checkpoint.every": 6})
    trainer = train.build_trainer(config, None)
    assert jax.tree.leaves(trainer.abstract_state.params)[0].dtype == np.float32  # parameters stay float32
    train.train_and_evaluate(config, tmp_path)
    losses = [r["loss"] for r in read_metrics(tmp_path).values()]
    assert all(np.isfinite(losses)) and len(losses) == 6
