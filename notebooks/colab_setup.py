"""Install the pinned stack for the runtime a notebook runs on: Colab (or any fresh machine) with CPU, GPU or TPU.

The notebooks' first cell clones the repository when it is not already there, then calls ``install()``, which
pip-installs ``requirements.txt`` with ``jax`` swapped for the build that matches the accelerator
(``jax[cuda13]`` on NVIDIA GPUs, ``jax[tpu]`` on TPUs, plain ``jax`` on CPU) at the same pinned version. From a
checkout whose environment already has the requirements (local Jupyter, CI) the notebooks skip this.

    python notebooks/colab_setup.py --dry-run     # print what would be installed here
"""

from __future__ import annotations

import argparse
import glob
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements.txt"
JAX_EXTRAS = {"cpu": "", "gpu": "[cuda13]", "tpu": "[tpu]"}


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


def requirements_for(accelerator: str, requirements: Path = REQUIREMENTS) -> list[str]:
    """The pinned requirement lines for ``accelerator``: ``jax==V`` -> ``jax[extra]==V``; the extras pull in the
    matching ``jaxlib`` (and its plugins), so the CPU ``jaxlib`` pin is dropped on accelerators."""
    if accelerator not in JAX_EXTRAS:
        raise ValueError(f"accelerator={accelerator!r}: expected one of {tuple(JAX_EXTRAS)}.")
    lines = []
    for raw in requirements.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name = re.split(r"[=<>\[ ;]", line, maxsplit=1)[0].lower()
        if name == "jaxlib" and accelerator != "cpu":
            continue
        if name == "jax":
            line = "jax" + JAX_EXTRAS[accelerator] + line[len("jax"):]
        lines.append(line)
    if not any(re.match(r"jax(\[|=)", line) for line in lines):
        raise ValueError(f"{requirements}: no 'jax==VERSION' line to adapt.")
    return lines


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
    reqs = requirements_for(accelerator)
    print(f"runtime: {accelerator}; installing {len(reqs)} pinned requirements "
          f"({next(r for r in reqs if r.startswith('jax'))})")
    if not dry_run:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *reqs], check=True)
        stale = stale_modules()
        if stale:
            raise SystemExit("Installed; this runtime had already imported " + ", ".join(stale) + ". Restart the "
                             "runtime (Colab: Runtime > Restart session) and run all cells again.")
    return reqs


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accelerator", choices=tuple(JAX_EXTRAS), help="Default: detected.")
    parser.add_argument("--dry-run", action="store_true", help="Print the requirements, install nothing.")
    args = parser.parse_args()
    print("\n".join(install(args.accelerator, args.dry_run)))
