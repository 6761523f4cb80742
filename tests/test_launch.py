"""Launch scripts: shellcheck-clean, and their dry runs print the expected commands."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[1] / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh"))


def run(args, **env):
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=LAUNCH.parent,
                          env={**os.environ, "PATH": os.environ["PATH"], **env})


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (.ci/run installs it)")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
    result = run(["shellcheck", str(script)])
    assert result.returncode == 0, result.stdout


def test_tpu_dry_run_prints_every_step():
    result = run([str(LAUNCH / "tpu_vm.sh"), "--dry-run", "all", "--", "--config.seed=3"], PROJECT="proj",
                 BUCKET="bkt", REPO_URL="https://example.invalid/usjepa.git", ACCELERATOR_TYPE="v5litepod-16")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("+ gcloud compute tpus queued-resources create usjepa-qr")
    assert "--accelerator-type=v5litepod-16" in lines[0] and "--spot" in lines[0]
    assert "--runtime-version=v2-alpha-tpuv5-lite" in lines[0]  # v5e's own runtime image
    setup_line = next(line for line in lines if "git\\ clone" in line)
    # a Python our pins accept (the images ship 3.10), the package with the TPU jax and the gcs backend, the lock
    assert "python3.11\\ -m\\ venv" in setup_line and "\\'.\\[tpu\\,gcs" in setup_line
    assert "-c\\ requirements.txt" in setup_line and "gcsfuse" not in setup_line
    run_line = next(line for line in lines if "usjepa_jax.main" in line)
    assert "--worker=all" in run_line and "--workdir=gs://bkt/usjepa_b16" in run_line  # straight to the bucket
    assert "--config.seed=3" in run_line and "usjepa_venv/bin/python" in run_line
    assert "tail" in lines[-1] and "--worker=0" in lines[-1]


@pytest.mark.parametrize("accelerator, runtime", [("v4-16", "tpu-ubuntu2204-base"), ("v5p-8", "v2-alpha-tpuv5"),
                                                  ("v5litepod-16", "v2-alpha-tpuv5-lite"),
                                                  ("v6e-8", "v2-alpha-tpuv6e")])
def test_tpu_runtime_version_follows_the_generation(accelerator, runtime):
    result = run([str(LAUNCH / "tpu_vm.sh"), "--dry-run", "create"], PROJECT="proj", ACCELERATOR_TYPE=accelerator)
    assert result.returncode == 0, result.stderr
    assert f"--accelerator-type={accelerator} --runtime-version={runtime} " in result.stdout
    explicit = run([str(LAUNCH / "tpu_vm.sh"), "--dry-run", "create"], PROJECT="proj", ACCELERATOR_TYPE=accelerator,
                   RUNTIME_VERSION="my-image")
    assert "--runtime-version=my-image" in explicit.stdout


def test_tpu_unknown_generation_is_refused():
    result = run([str(LAUNCH / "tpu_vm.sh"), "--dry-run", "create"], PROJECT="proj", ACCELERATOR_TYPE="v9x-8")
    assert result.returncode == 2 and "unknown ACCELERATOR_TYPE 'v9x-8'" in result.stderr


def test_tpu_gcsfuse_mount_is_optional_with_the_flags_orbax_needs():
    env = dict(PROJECT="proj", BUCKET="bkt", REPO_URL="https://example.invalid/usjepa.git", MOUNT="1")
    setup = run([str(LAUNCH / "tpu_vm.sh"), "--dry-run", "setup"], **env)
    assert "gcsfuse\\ --implicit-dirs\\ --rename-dir-limit=200000" in setup.stdout, setup.stdout
    start = run([str(LAUNCH / "tpu_vm.sh"), "--dry-run", "run"], **env)
    assert "--workdir=/gcs/bkt/usjepa_b16" in start.stdout


def test_tpu_requires_a_bucket_for_run():
    result = run([str(LAUNCH / "tpu_vm.sh"), "--dry-run", "run"], PROJECT="proj", BUCKET="")
    assert result.returncode == 2 and "BUCKET is required" in result.stderr


def test_tpu_delete_dry_run():
    result = run([str(LAUNCH / "tpu_vm.sh"), "--dry-run", "delete"], PROJECT="proj")
    assert result.stdout.startswith("+ gcloud compute tpus queued-resources delete usjepa-qr")


def test_slurm_submits_one_task_per_gpu_and_runs_srun_inside_the_job():
    outside = run([str(LAUNCH / "slurm_gpu.sh"), "--dry-run"], NODES="2", GPUS_PER_NODE="4", SLURM_JOB_ID="")
    assert outside.returncode == 0, outside.stderr
    assert outside.stdout.startswith("+ sbatch --nodes=2 --ntasks-per-node=4 --gpus-per-task=1")
    inside = run([str(LAUNCH / "slurm_gpu.sh"), "--dry-run", "--", "--config.seed=1"], SLURM_JOB_ID="42",
                 CONFIG="configs/base.py", WORKDIR="/shared/run")
    assert inside.stdout.strip() == ("+ srun --kill-on-bad-exit=1 python -m usjepa_jax.main "
                                     "--config=configs/base.py --workdir=/shared/run --config.seed=1")
