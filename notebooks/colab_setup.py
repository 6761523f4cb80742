"""Install the package for the runtime a notebook runs on: Colab (or any fresh machine) with CPU, GPU or TPU.

The notebooks' first cell clones the repository when it is not already there, then calls ``install()``, which
pip-installs the clone as a package with the extras for this runtime: the jax build for the accelerator
(``[cuda]`` = ``jax[cuda13]`` on NVIDIA GPUs, ``[tpu]`` = ``jax[tpu]`` on TPUs, plain jax on CPU) and the
real-data decoders (DICOM, NIfTI, video, HDF5), at the versions ``requirements.txt`` pins (used as constraints, so nothing else from it is
installed). Only the package's runtime needs: no test tools, no Jupyter packages, so the kernel's own
(``ipykernel``, ``jupyter_client``...) stay as Colab ships them. From a checkout whose environment already has
the requirements (local Jupyter, CI) the notebooks skip this.

    python notebooks/colab_setup.py --dry-run     # print the pip command for this machine
"""

from __future__ import annotations

import argparse
import glob
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ACCELERATOR_EXTRAS = {"cpu": [], "gpu": ["cuda"], "tpu": ["tpu"]}
DATA_EXTRAS = ["dicom", "nifti", "video", "hdf5"]  # the real-data readers (notebooks/your_data.ipynb)


def detect_accelerator() -> str:
    """``tpu``, ``gpu`` or ``cpu``, from what the machine exposes (no jax import: jax may not be installed yet)."""
    if os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_ACCELERATOR_TYPE") or glob.glob("/dev/accel*") \
            or glob.glob("/dev/vfio/[0-9]*"):
        return "tpu"
    if shutil.which("nvidia-smi"):
        probe = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
        if probe.returncode == 0 and "GPU" in probe.stdout:
            return "gpu"
    return "cpu"


def pip_arguments(accelerator: str, root: Path = ROOT) -> list[str]:
    """``pip install`` arguments: the clone, editable, with this runtime's extras, constrained to the lock."""
    if accelerator not in ACCELERATOR_EXTRAS:
        raise ValueError(f"accelerator={accelerator!r}: expected one of {tuple(ACCELERATOR_EXTRAS)}.")
    extras = ",".join(ACCELERATOR_EXTRAS[accelerator] + DATA_EXTRAS)
    return ["-e", f"{root}[{extras}]", "-c", str(root / "requirements.txt")]


def stale_modules() -> list[str]:
    """Modules already imported in this (notebook) process at a version other than the one now installed."""
    stale = []
    for module, dist in (("numpy", "numpy"), ("jax", "jax"), ("scipy", "scipy"), ("PIL", "pillow")):
        loaded = sys.modules.get(module)
        if loaded is not None and getattr(loaded, "__version__", None) != importlib.metadata.version(dist):
            stale.append(f"{module} {loaded.__version__} (installed now: {importlib.metadata.version(dist)})")
    return stale


def install(accelerator: str | None = None, dry_run: bool = False) -> list[str]:
    accelerator = accelerator or detect_accelerator()
    args = pip_arguments(accelerator)
    print(f"runtime: {accelerator}; pip install {' '.join(args)}")
    if not dry_run:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)
        stale = stale_modules()
        if stale:
            raise SystemExit("Installed; this runtime had already imported " + ", ".join(stale) + ". Restart the "
                             "runtime (Colab: Runtime > Restart session) and run all cells again.")
    return args


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accelerator", choices=tuple(ACCELERATOR_EXTRAS), help="Default: detected.")
    parser.add_argument("--dry-run", action="store_true", help="Print the pip command, install nothing.")
    args = parser.parse_args()
    install(args.accelerator, args.dry_run)
