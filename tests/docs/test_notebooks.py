"""The notebooks run top to bottom in smoke mode and show what they say they show, and read well as committed
(figures, not logs).

Each notebook has exactly one cell tagged ``parameters`` (``SMOKE = False``, ``WORKDIR = ...``, the papermill
convention); the test runs the notebook with ``SMOKE = True`` and a temporary ``WORKDIR`` injected right after it,
in a fresh kernel on one CPU device, like a Colab CPU runtime. Then every cell must give the kinds of output its
committed copy shows (a figure where a figure is saved, text where text is), and what each notebook prints and
writes is checked: the losses are finite, probe scores are in [0, 1], converted and exported encoders match
their originals, the files it names exist.
"""

import json
import math
import re
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.docs

REPO = Path(__file__).resolve().parents[2]
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


def output_kinds(cell) -> set[str]:
    """What a code cell shows: ``text`` (printed), ``figure`` (an image), ``error``."""
    kinds = set()
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            kinds.add("text")
        elif output.output_type in ("display_data", "execute_result"):
            kinds.add("figure" if "image/png" in output.data else "text")
        elif output.output_type == "error":
            kinds.add("error")
    return kinds


def printed(cell) -> str:
    return "".join(o.text for o in cell.get("outputs", []) if o.output_type == "stream")


def finite(text: str, pattern: str) -> float:
    """The number ``pattern`` captures in ``text``, which must be there and finite."""
    match = re.search(pattern, text)
    assert match, f"not printed: {pattern!r} in {text[-800:]!r}"
    value = float(match.group(1))
    assert math.isfinite(value), f"{pattern!r}: {value}"
    return value


def check_quickstart(text: str, work: Path) -> None:
    assert finite(text, r"trained in \d+ s; final loss (\S+)") > 0
    header = re.search(r"^\s+student\s+teacher\s+random$", text, re.M)
    assert header, "the evaluation table's header (student, teacher, random) is not printed"
    rows = re.findall(r"^(\w[^\n]*?)\s+(-?\d\.\d{3})\s+(-?\d\.\d{3})\s+(-?\d\.\d{3})$", text, re.M)
    labels = {row[0] for row in rows}
    probes = {f"{task}: {probe} probe macro-F1" for task in ("lesion", "organ") for probe in ("linear", "attentive")}
    assert probes | {"anatomy variance share (pooled)"} <= labels, labels
    assert all(0 <= float(v) <= 1 for row in rows for v in row[1:]), rows
    for name in ("encoder", "teacher/encoder", "metrics.jsonl", "config.json",
                 "eval/student_latest/lesion/pca_features.png", "eval/student_latest/lesion/probe_curves.png"):
        assert (work / name).exists(), f"quickstart did not write {name}"


def check_your_teacher(text: str, work: Path) -> None:
    assert re.search(r"teacher checkpoint: \S+ \((yours|timm, built here|the test fixture)", text)
    assert finite(text, r"max abs difference to PyTorch (\S+)") < 1e-4  # converted = original
    assert finite(text, r"student trained: loss (\S+) after \d+ steps") > 0
    args = json.loads((work / "student_timm.json").read_text())["model_args"]
    shape = tuple(int(n) for n in re.search(r"student tokens \((\d+), (\d+), (\d+)\)", text).groups())
    assert shape == (2, (args["img_size"] // args["patch_size"]) ** 2, args["embed_dim"]), (shape, args)
    assert finite(text, r"(?m)student tokens \S+ \S+ \S+ max abs difference to [^\n]*? (\S+)$") < 1e-4  # exported
    for name in ("teacher", "student/encoder", "student_timm.safetensors"):
        assert (work / name).exists(), f"your_teacher did not write {name}"


def check_your_data(text: str, work: Path) -> None:
    pngs = re.search(r"^scanner_pngs\s+(\d+)\s+(\d+)\s+\d+ image\s+(\d+)$", text, re.M)
    assert pngs and pngs.group(1) == pngs.group(2) and pngs.group(3) == "1", "the inventory of the demo PNGs"
    assert "unreadable scanner_pngs/cut_in_half.png" in text  # found while scanning
    summary = re.search(r"(prepared_\d+px): (\d+) files, (\d+) frames in (\d+) shard", text)
    assert summary, "the prepared data's summary is not printed"
    manifest = json.loads((work / summary.group(1) / "manifest.json").read_text())
    assert (manifest["total"]["files"], manifest["total"]["frames"]) == (int(summary.group(2)), int(summary.group(3)))
    assert len(manifest["shards"]) == int(summary.group(4))
    skipped = {s["file"] for d in manifest["datasets"].values() for s in d["skipped"]}
    assert skipped == {"cut_in_half.png", "truncated_cine.dcm"}, skipped  # the two broken files, and only they
    assert "scanner_pngs/cut_in_half.png:" in text and "dicoms/truncated_cine.dcm:" in text
    assert finite(text, r"trained in \d+ s; final loss (\S+)") > 0
    for name in ("run_smoke/encoder", "run_smoke/teacher/encoder"):
        assert (work / name).is_dir(), f"your_data did not write {name}"


CHECKS = {"quickstart": check_quickstart, "your_teacher": check_your_teacher, "your_data": check_your_data}


def test_every_notebook_has_its_checks():
    assert {p.stem for p in NOTEBOOKS} == set(CHECKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode_and_shows_what_it_says(path, tmp_path, monkeypatch):
    committed = nbformat.read(path, as_version=4)
    nb = nbformat.read(path, as_version=4)
    work = tmp_path / "work"
    nb.cells.insert(parameters_cell(nb) + 1, nbformat.v4.new_code_cell(
        f"SMOKE = True\nWORKDIR = {json.dumps(str(work))}"))
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # the kernel sees one CPU device, like a Colab CPU runtime
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(REPO)}})
    client.execute()  # raises CellExecutionError with the failing cell and its traceback
    ran = nb.cells[:parameters_cell(nb) + 1] + nb.cells[parameters_cell(nb) + 2:]
    for index, (saved, cell) in enumerate(zip(committed.cells, ran)):
        if cell.cell_type == "code":
            missing = output_kinds(saved) - output_kinds(cell)
            assert not missing, f"{path.name}, cell {index}: the committed copy shows {missing}, the run did not"
    CHECKS[path.stem]("".join(printed(cell) for cell in ran if cell.cell_type == "code"), work)


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
    installed = project["dependencies"] + [r for e in ("cuda", "tpu", "dicom", "nifti", "video", "hdf5")
                                           for r in extras[e]]
    names = {re.split(r"[\[<>=]", r, maxsplit=1)[0].lower() for r in installed}
    assert not names & {"pytest", "ipykernel", "nbclient", "nbformat", "portpicker", "jupyter_client"}, names
    with pytest.raises(ValueError, match="accelerator"):
        colab_setup.pip_arguments("ipu")
