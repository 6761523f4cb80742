"""The notebooks run top to bottom in smoke mode, and read well as committed (figures, not logs).

Each notebook has exactly one cell tagged ``parameters`` (``SMOKE = False``, ``WORKDIR = ...``, the papermill
convention); the test runs the notebook with ``SMOKE = True`` and a temporary ``WORKDIR`` injected right after it,
in a fresh kernel on one CPU device, like a Colab CPU runtime.
"""

import json
import re
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "notebooks"))
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
MAX_NOTEBOOK_BYTES = 1_500_000
MAX_STREAM_LINES = 40


def parameters_cell(nb) -> int:
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "your_teacher.ipynb", "your_data.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_small_and_starts_with_the_set_up(path):
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES, f"{path.name}: clear large outputs before committing"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert "colab_setup.install()" in code[0].source, f"{path.name}: the first code cell must be the set-up"
    params = nb.cells[parameters_cell(nb)].source
    assert "SMOKE = False" in params and "WORKDIR" in params, f"{path.name}: parameters need SMOKE and WORKDIR"
    for cell in code:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                lines = output.text.count("\n")
                assert lines <= MAX_STREAM_LINES, f"{path.name}: a cell prints {lines} lines (keep logs out)"
            assert output.output_type != "error", f"{path.name}: committed with an error output"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode(path, tmp_path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(parameters_cell(nb) + 1, nbformat.v4.new_code_cell(
        f"SMOKE = True\nWORKDIR = {json.dumps(str(tmp_path / 'work'))}"))
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # the kernel sees one CPU device, like a Colab CPU runtime
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(REPO)}})
    client.execute()  # raises CellExecutionError with the failing cell and its traceback


def test_colab_setup_installs_the_package_for_the_runtime_and_its_runtime_needs_only():
    import colab_setup

    cpu, gpu, tpu = (colab_setup.pip_arguments(a) for a in ("cpu", "gpu", "tpu"))
    assert cpu == ["-e", f"{REPO}[dicom,nifti,video,hdf5]", "-c", str(REPO / "requirements.txt")]
    assert gpu[1] == f"{REPO}[cuda,dicom,nifti,video,hdf5]"
    assert tpu[1] == f"{REPO}[tpu,dicom,nifti,video,hdf5]"
    # what those extras pull in: the runtime, jax's accelerator build, decoders; nothing of the test tools or of
    # the Jupyter kernel (Colab's own ipykernel stays)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert extras["cuda"] == ["jax[cuda13]>=0.10.2,<0.11"] and extras["tpu"] == ["jax[tpu]>=0.10.2,<0.11"]
    installed = project["dependencies"] + [r for e in ("cuda", "tpu", "dicom", "nifti", "video", "hdf5") for r in extras[e]]
    names = {re.split(r"[\[<>=]", r, maxsplit=1)[0].lower() for r in installed}
    assert not names & {"pytest", "ipykernel", "nbclient", "nbformat", "portpicker", "jupyter_client"}, names
    with pytest.raises(ValueError, match="accelerator"):
        colab_setup.pip_arguments("ipu")
