"""The pip package: a wheel and an editable install work from outside the checkout (configs included).

Both build from a copy of the package sources in a temporary folder (nothing is written into the checkout) with
the already-installed setuptools (``--no-build-isolation``: no index needed); about 15 s together on 2 cores.
"""

import email.parser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "usjepa_jax", "configs")


def _source_copy(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(ROOT / name, src / name)
    return src


def _python(args, cwd, **env):
    """A fresh interpreter started outside the checkout, without the checkout on its path."""
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, env={**clean, **env})


def _pip(*args, cwd):
    result = _python([sys.executable, "-m", "pip", *args, "-q", "--no-deps", "--no-build-isolation"], cwd)
    assert result.returncode == 0, result.stderr
    return result


def test_wheel_holds_the_package_and_configs_and_runs_from_any_directory(tmp_path):
    src = _source_copy(tmp_path)
    _pip("wheel", "-w", str(tmp_path / "dist"), str(src), cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("usjepa_jax-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = email.parser.Parser().parsestr(
            z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
        z.extractall(tmp_path / "site")  # a pure-Python wheel installs by unpacking
    # every module of the checkout is in the wheel, the configs as usjepa_jax.configs
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "usjepa_jax").rglob("*.py")}
    expected |= {f"usjepa_jax/configs/{p.name}" for p in (ROOT / "configs").glob("*.py")}
    assert expected <= names, sorted(expected - names)
    assert {"cuda", "tpu", "gcs", "dicom", "nifti", "torch", "test"} <= set(metadata.get_all("Provides-Extra"))
    requires = metadata.get_all("Requires-Dist")
    assert any(r.startswith("jax[cuda13]") and 'extra == "cuda"' in r for r in requires), requires
    assert not any(r.startswith(("pytest", "ipykernel", "pydicom", "torch")) and "extra ==" not in r
                   for r in requires), requires

    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    imported = _python([sys.executable, "-c", "import usjepa_jax, usjepa_jax.configs.folder as f; "
                        "print(usjepa_jax.__file__); print(f.get_config('/data/x,smoke').data.paths)"],
                       elsewhere, PYTHONPATH=str(site))
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.splitlines() == [str(site / "usjepa_jax" / "__init__.py"), "['/data/x']"]
    # the CLI from another directory with an installed config that builds on a sibling (mae.py on base.py):
    # it loads, parses and refuses the typo'd key before any compute
    cli = _python([sys.executable, "-m", "usjepa_jax.main", f"--config={site}/usjepa_jax/configs/mae.py:smoke",
                   f"--workdir={tmp_path / 'run'}", "--config.optim.no_such_key=1"], elsewhere,
                  PYTHONPATH=str(site), JAX_PLATFORMS="cpu")
    assert cli.returncode != 0 and "no_such_key" in cli.stderr, cli.stderr[-2000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(sys.prefix != sys.base_prefix, reason="needs the base interpreter (a venv of a venv)")
def test_editable_install_maps_configs_to_the_checkout(tmp_path):
    src = _source_copy(tmp_path)
    venv = tmp_path / "venv"
    # --system-site-packages: the runtime deps come from this interpreter; --without-pip: so does pip (with the
    # setuptools this interpreter has, not the venv's bundled one)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    result = _python([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(src)],
                     tmp_path)
    assert result.returncode == 0, result.stderr
    imported = _python([python, "-c", "import usjepa_jax, usjepa_jax.configs.base as b; "
                        "print(usjepa_jax.__file__); print(b.__file__)"], venv)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.splitlines() == [str(src / "usjepa_jax" / "__init__.py"), str(src / "configs" / "base.py")]


def test_main_warns_loudly_when_an_accelerator_config_finds_only_the_cpu():
    from usjepa_jax import config as config_lib
    from usjepa_jax import sharding

    found, warning = sharding.backend_report(expect_accelerator=True)
    assert "backend cpu: 8 device(s)" in found  # tests/conftest.py's fake CPU devices
    assert "only the CPU" in warning and "'.[cuda]'" in warning and "'.[tpu]'" in warning
    assert sharding.backend_report(expect_accelerator=False) == (found, None)
    paper = config_lib.sibling_config(str(ROOT / "configs" / "base.py"), "usrc_vitb16").get_config()
    base = config_lib.sibling_config(str(ROOT / "configs" / "x.py"), "base").get_config()
    assert paper.expect_accelerator and not base.expect_accelerator


def test_a_missing_decoder_fails_once_naming_its_extra(tmp_path, monkeypatch):
    """Without pydicom, a folder of DICOMs is an install problem, not a folder of broken files to skip."""
    from usjepa_jax.data import scanning

    (tmp_path / "a.dcm").write_bytes(b"\0" * 132)
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom -> ImportError
    with pytest.raises(ImportError, match=r"DICOM files needs .*'pydicom'.*usjepa_jax\[dicom\]"):
        scanning.scan_files(tmp_path)
