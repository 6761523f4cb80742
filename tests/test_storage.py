"""Paths through etils.epath: a bucket path without its backend fails at start, clearly, and writes nothing; the
writers reach a non-local epath backend (an fsspec filesystem registered for ``gs://`` that stores in a temporary
folder: the code path a real bucket takes through gcsfs, without network)."""

import os
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
from etils.epath import backend as epath_backend
from fsspec.implementations.local import LocalFileSystem

from usjepa_jax import storage

ROOT = Path(__file__).resolve().parents[1]


def _gcs_backend_installed() -> bool:
    try:
        fsspec.get_filesystem_class("gs")
        return True
    except ImportError:
        return False


@pytest.mark.skipif(_gcs_backend_installed(), reason="gcsfs is installed: the missing-backend path cannot occur")
def test_gs_workdir_without_backend_fails_at_start_naming_the_extra_and_creates_nothing(tmp_path):
    with pytest.raises(storage.MissingBackendError, match=r"pip install 'usjepa_jax\[gcs\]'"):
        storage.path("gs://my-bucket/run")
    result = subprocess.run([sys.executable, "-m", "usjepa_jax.main", f"--config={ROOT}/configs/base.py:smoke",
                             "--workdir=gs://my-bucket/run"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode != 0
    assert "gs://my-bucket/run: gs:// paths need a filesystem backend" in result.stderr, result.stderr[-2000:]
    assert "pip install 'usjepa_jax[gcs]'" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no ./gs:/my-bucket/run


class LocalBucket(LocalFileSystem):
    """``gs://BUCKET/KEY`` stored at ``ROOT/BUCKET/KEY``; paths come back without the protocol, as from gcsfs."""

    protocol = ("gs", "gcs")
    root = ""

    def __init__(self, *args, finalize_on_close=None, **kwargs):  # epath passes gcsfs's option
        super().__init__(*args, auto_mkdir=True, **kwargs)  # a bucket has no folders to create first

    @classmethod
    def _strip_protocol(cls, path):
        path = fsspec.utils.stringify_path(path)
        if path.startswith(("gs://", "gcs://")):
            path = os.path.join(cls.root, path.split("://", 1)[1])
        return super()._strip_protocol(path)

    def glob(self, path, **kwargs):
        return [p[len(self.root) + 1:] for p in super().glob(path, **kwargs)]


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """A ``gs://`` backend for epath that stores under ``tmp_path/store`` (yields that folder)."""
    store = tmp_path / "store"
    store.mkdir()
    monkeypatch.setattr(LocalBucket, "root", str(store))
    registry = sys.modules["fsspec.registry"]._registry  # fsspec's own table (restored by monkeypatch)
    for protocol in ("gs", "gcs"):
        monkeypatch.setitem(registry, protocol, LocalBucket)
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    monkeypatch.chdir(tmp_path)
    yield store
    epath_backend.fsspec_backend._get_filesystem.cache_clear()


def test_paths_reach_a_non_local_epath_backend(bucket, tmp_path):
    run = storage.path("gs://bkt/run")
    assert storage.is_remote(run) and str(run / "metrics.jsonl") == "gs://bkt/run/metrics.jsonl"
    (run / "sub").mkdir(parents=True, exist_ok=True)
    (run / "sub" / "a.json").write_text("{}")
    assert (bucket / "bkt" / "run" / "sub" / "a.json").read_text() == "{}"
    assert [p.name for p in run.glob("sub/*.json")] == ["a.json"]
    assert not (tmp_path / "gs:").exists()


def test_run_files_go_straight_to_the_bucket(bucket, tmp_path):
    """metrics.jsonl (resumed: appended to), the loss curve, an exported HF/timm encoder folder written to and
    loaded back from gs://, through the modules' own writers. (Orbax checkpoints go through epath too, but their
    arrays through tensorstore's own GCS driver, which needs a real bucket.)"""
    import json

    import numpy as np

    from tests.conftest import random_vit
    from usjepa_jax import run_log
    from usjepa_jax.encoders import __main__ as cli
    from usjepa_jax.encoders import export_encoder, load_encoder

    run = "gs://bkt/run"
    for records in ([{"step": 0, "loss": 1.0}, {"step": 50, "loss": 0.5}], [{"step": 100, "loss": 0.25}]):
        log = storage.LineLog(f"{run}/metrics.jsonl")  # the second one: a resumed run
        for r in records:
            log.write(json.dumps(r) + "\n")
        log.close()
    assert run_log.read_metrics(run) == {"loss": {0: 1.0, 50: 0.5, 100: 0.25}}
    assert run_log.write_loss_curve(storage.path(run)) == storage.path(f"{run}/loss_curve.png")
    assert (bucket / "bkt" / "run" / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"

    module, params = random_vit(posemb="learn", class_token=True)
    export_encoder(tmp_path / "encoder", module, params, mean=0.5, std=0.25, image_size=32)
    cli.main(["export", "--workdir", str(tmp_path / "encoder"), "--output", f"{run}/hf"])
    assert sorted(p.name for p in (bucket / "bkt" / "run" / "hf").iterdir()) == ["config.json", "model.safetensors"]
    back = load_encoder(f"{run}/hf")
    assert back.path == f"{run}/hf/model.safetensors"
    for key, value in back.params["encoder"]["blocks_0"]["attn"]["qkv"].items():
        np.testing.assert_array_equal(value, params["encoder"]["blocks_0"]["attn"]["qkv"][key])
    assert not (tmp_path / "gs:").exists() and not (Path.cwd() / "gs:").exists()
