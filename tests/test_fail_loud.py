"""Fail loud, lose nothing (#25): divergence, a damaged checkpoint, a refused resume, skipped evaluation inputs,
user errors as one line with exit 2, teacher shapes at load, preemption's exit code."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.conftest import eval_smoke_config, read_metrics, smoke_config, write_csv
from usjepa_jax import cli, errors, layout, storage, train
from usjepa_jax.encoders import export_encoder, load_encoder
from usjepa_jax.evaluation import suite, table
from usjepa_jax.evaluation.features import random_encoder

REPO = Path(__file__).resolve().parents[1]
QUICK = {"method": "pixel", "optim.total_steps": 4, "checkpoint.every": 2, "log_every": 1, "eval_every": 0,
         "evals.knn.every": 0}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 4-step pixel run with checkpoints at steps 2 and 4 (copied by the tests that change it)."""
    workdir = tmp_path_factory.mktemp("finished")
    train.train_and_evaluate(smoke_config(**QUICK), workdir)
    return workdir


# ------------------------------------------------------------------------------------------------ divergence
def test_non_finite_values_stop_the_run_naming_them():
    with pytest.raises(errors.Diverged, match=r"val_loss=nan at step 4.*last good checkpoint is step 2"):
        train.check_finite({"val_loss": float("nan")}, 4, "step 2")
    assert train.check_finite({"loss": 1e11}, 1, "-") == {"loss": 1e11}  # large is not diverged


def test_an_encoder_that_embeds_to_nan_is_never_exported(tmp_path):
    """A diverged run's encoder can keep a finite training loss while the full image embeds to NaN: the export
    checks the embeddings themselves."""
    trainer = train.build_trainer(smoke_config(**QUICK))
    state = trainer.init(jax.random.key(0))
    batch = train.example_batch(trainer.config, trainer.sampler, trainer.config.optim.batch_size)
    train.export_checked(trainer, state.params["encoder"], batch, tmp_path / "good", 0)
    assert load_encoder(tmp_path / "good").width == trainer.encoder.width
    overflowing = jax.tree.map(lambda x: x * 1e30, state.params["encoder"])  # finite, but overflows
    with pytest.raises(errors.Diverged, match="embeds images to NaN"):
        train.export_checked(trainer, overflowing, batch, tmp_path / "bad", 4)
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------------------ checkpoints
def test_a_damaged_latest_checkpoint_falls_back_and_resumes_exactly(finished_run, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(finished_run / layout.CHECKPOINTS_DIR, run / layout.CHECKPOINTS_DIR)
    data_files = sorted((run / layout.CHECKPOINTS_DIR / "4" / "state").rglob("d/*"), key=lambda p: p.stat().st_size)
    with open(data_files[-1], "r+b") as f:
        f.truncate(100)  # a save cut short
    train.train_and_evaluate(smoke_config(**QUICK), run)
    assert "Checkpoint step 4 does not restore" in caplog.text and "resuming from step 2" in caplog.text
    assert (run / layout.CHECKPOINTS_DIR / "4.damaged").is_dir()  # moved aside, not deleted
    straight, resumed = read_metrics(finished_run), read_metrics(run)
    assert sorted(resumed) == [3, 4] and [resumed[s]["loss"] for s in (3, 4)] == [straight[s]["loss"] for s in (3, 4)]
    jax.tree.map(np.testing.assert_array_equal, load_encoder(finished_run).params, load_encoder(run).params)


def test_no_restorable_checkpoint_fails_and_moves_nothing(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run / layout.CHECKPOINTS_DIR, run / layout.CHECKPOINTS_DIR)
    for step in ("2", "4"):
        (run / layout.CHECKPOINTS_DIR / step / "meta" / "metadata").write_text("{not json")
    with pytest.raises(errors.UserError, match=r"No checkpoint in .* restores \(steps \[4, 2\]"):
        train.train_and_evaluate(smoke_config(**QUICK), run)
    assert sorted(p.name for p in (run / layout.CHECKPOINTS_DIR).iterdir()) == ["2", "4"]


def test_a_refused_resume_leaves_config_json_alone(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = (run / layout.CONFIG_FILE).read_bytes()
    with pytest.raises(errors.ResumeRefused, match="does not fit this run's train state"):
        train.train_and_evaluate(smoke_config(**QUICK, **{"model.width": 64}), run)
    assert (run / layout.CONFIG_FILE).read_bytes() == before


# ------------------------------------------------------------------------------------------------ teacher
def test_a_teacher_whose_model_json_lies_fails_at_load_naming_it(tmp_path):
    c = smoke_config()
    enc = random_encoder(c.model, c.data.image_size, seed=0)
    export_encoder(tmp_path / "teacher", enc.module, enc.params, mean=0.5, std=0.5, image_size=c.data.image_size)
    spec = json.loads((tmp_path / "teacher" / layout.MODEL_FILE).read_text())
    spec["vit"]["width"] = 2 * spec["vit"]["width"]
    (tmp_path / "teacher" / layout.MODEL_FILE).write_text(json.dumps(spec))
    config = smoke_config(**{"teacher.checkpoint": str(tmp_path / "teacher")})
    with pytest.raises(errors.UserError, match=rf"Encoder {tmp_path / 'teacher'}: its weights do not fit.*width "
                                               rf"{spec['vit']['width']}.*different shape"):
        train.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing written


# ------------------------------------------------------------------------------------------------ evaluation
def test_skipped_inputs_are_in_the_results_files_and_strict_refuses_them(tmp_path):
    listing = write_csv(tmp_path / "task", n=36)
    rows = listing.read_text().splitlines()
    listing.write_text("\n".join(rows + ["img/missing.png,linear,nobody"]) + "\n")
    config = eval_smoke_config()
    config.evals.evaluators = "knn"
    with pytest.raises(Exception, match="missing.png"):
        strict = eval_smoke_config()
        strict.evals.labelled.on_error = "raise"
        suite.evaluate_table(strict, ["random"], [f"t={listing}"], tmp_path / "strict", log=lambda m: None)
    suite.evaluate_table(config, ["random"], [f"t={listing}"], tmp_path / "out", log=lambda m: None)
    skipped = json.loads((tmp_path / "out" / table.TABLE_JSON).read_text())["tasks"]["t"]["skipped"]
    assert [s["file"] for s in skipped] == ["img/missing.png"] and "does not exist" in skipped[0]["reason"]
    assert "task t: 1 input files skipped" in (tmp_path / "out" / table.TABLE_MD).read_text()


def test_an_unknown_task_lists_the_simulated_ones():
    with pytest.raises(errors.UserError, match=r"'nosuchtask': neither a simulated task \(lesion, organ"):
        suite.TaskRef.parse("nosuchtask")


# ------------------------------------------------------------------------------------------------ the CLI
@pytest.mark.parametrize("error,code", [(errors.UserError("config.x=1 is invalid"), 2),
                                        (FileNotFoundError("/data/x.png does not exist"), 2),
                                        (errors.Diverged("Non-finite loss=nan at step 3"), 3),
                                        (errors.Preempted("Preempted at step 2"), 75)])
def test_errors_end_as_one_line_with_their_exit_code(error, code, capsys):
    def main(argv):
        raise error

    with pytest.raises(SystemExit) as exit_:
        cli.guard(main)(["prog"])
    assert exit_.value.code == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(error) in err and "Traceback" not in err


def test_a_library_error_keeps_its_traceback():
    def main(argv):
        np.zeros(2) + np.zeros(3)  # a ValueError raised inside numpy: a bug, not the user's

    with pytest.raises(ValueError, match="broadcast"):
        cli.guard(main)(["prog"])


def test_one_line_of_a_config_files_wrapped_traceback():
    message = ("flag --config=configs/base.py:smok: Error whilst parsing config file:\n\n  Traceback (most recent "
               "call last):\n    File x\n  ValueError: Unknown config variant 'smok'")
    assert cli.one_line(message) == ("flag --config=configs/base.py:smok: ValueError: Unknown config variant "
                                     "'smok'")


def test_bad_workdirs_are_refused_naming_them(tmp_path):
    (tmp_path / "file").write_text("")
    for workdir, message in (("", "--workdir is empty"), (str(tmp_path / "file"), "is a file"),
                             (str(tmp_path / "file" / "run"), f"{tmp_path / 'file'} is a file")):
        with pytest.raises(errors.UserError, match=message):
            storage.check_workdir(workdir)
    storage.check_workdir(str(tmp_path / "new" / "run"))  # created later: fine


def test_main_reports_a_bad_workdir_in_one_line_with_exit_2(tmp_path):
    (tmp_path / "file").write_text("")
    result = subprocess.run([sys.executable, "-m", "usjepa_jax.main", "--config=configs/base.py:smoke",
                             f"--workdir={tmp_path / 'file'}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: --workdir={tmp_path / 'file'}: ")
    assert "Traceback" not in result.stderr


def test_slurm_script_requeues_on_the_preemption_exit_code(tmp_path):
    calls = tmp_path / "calls"
    for name, body in (("srun", "exit 75"), ("scontrol", f'echo "scontrol $*" >> {calls}')):
        (tmp_path / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (tmp_path / name).chmod(stat.S_IRWXU)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_JOB_ID": "42"}
    result = subprocess.run([str(REPO / "launch" / "slurm_gpu.sh")], cwd=REPO, capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 75 and calls.read_text().strip() == "scontrol requeue 42"
