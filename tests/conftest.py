"""Test set-up: 8 fake CPU devices so that sharded steps are tested without accelerators, and one persistent
compilation cache for the test session.

Both must be set before jax is imported anywhere, which is why they live here.

The compilation cache: many tests build the same smoke-size programs (a run and its resumed rerun, the stage-1
teacher, init, evaluation, orbax's per-shape slices when saving, the feature extractor of every encoder), each
compiled anew by a fresh ``jax.jit``; on CPU compiling is most of a smoke run. With ``JAX_COMPILATION_CACHE_DIR``
an identical program is compiled once per session and loaded afterwards: the same executable, so exact-equality
tests compare what they compared before. The directory is new for each session (never reused from an earlier
run). pytest-xdist starts its workers after this file ran in the controller, so they and the subprocesses the
tests start (CLI, notebook kernels) inherit the variables and share the directory: jax writes an entry only when
it is absent, and an entry read while another process is still writing it fails its zlib check, which jax
reports as a warning before compiling the program itself (never a wrong program).
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix=f"usjepa_jax_tests_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # small programs too (orbax's slices)


# ------------------------------------------------------------------------------------------------ shared builders
# Imported by the test modules (``from tests.conftest import smoke_config``); test modules import nothing from one
# another. Imports of the package stay inside the builders: jax must not load before the variables above are set.
import csv  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LABELLED_SIZE = 32  # input size of the labelled-task tests (evaluation/labelled.py, suite.py)


def smoke_config(**overrides):
    """configs/base.py:smoke on one device, with ``overrides`` (dotted keys; a dict value updates a subtree:
    ``evals=dict(num_train=40)``). One device unless a test sets the mesh: on 2 CPU cores a smoke run on the 8 fake
    devices takes ~1.5x as long, and the sharded behaviour is tested where it is the point (sharding equivalence
    and a sharded resume in test_train.py, tests/test_scale.py, the CLI smoke run on every device)."""
    from configs import base

    c = base.get_config("smoke")
    c.mesh.data = 1
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        if isinstance(value, dict):
            target[leaf].update(value)
        else:
            target[leaf] = value
    return c


def eval_smoke_config():
    """The smoke config with small evaluation splits at ``LABELLED_SIZE`` px and no figures: the labelled-task and
    results-table tests."""
    c = smoke_config(evals=dict(evaluators="knn,linear_probe,few_shot,robustness,speckle_invariance",
                                figures=False, num_train=40, num_val=20, num_test=20))
    c.evals.robustness.corruptions = "blur,speckle"
    c.evals.few_shot.fractions = (0.5, 1.0)
    c.data.image_size = LABELLED_SIZE
    return c


def read_metrics(workdir):
    """step -> merged metrics (training and validation rows of a step are separate lines)."""
    from usjepa_jax import layout

    merged = {}
    for row in map(json.loads, (Path(workdir) / layout.METRICS_FILE).read_text().splitlines()):
        merged.setdefault(row["step"], {}).update(row)
    return merged


def encoder_params(workdir):
    from usjepa_jax import layout
    from usjepa_jax.encoders import load_encoder

    return load_encoder(Path(workdir) / layout.ENCODER_DIR).params


def tensorboard_scalars(logdir) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of the event files in ``logdir``, by TensorBoard's event reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    events = EventAccumulator(str(logdir))
    events.Reload()
    return {tag: {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)}
            for tag in events.Tags()["tensors"]}


def geometry_images(n, seed=0):
    """``[(image uint8 [64, 64], geometry name)]``, ``n`` simulator images labelled by their probe geometry
    (linear / sector / curvilinear: a label every encoder, a random one included, can learn)."""
    from usjepa_jax.data.synthetic import SimulatorConfig, render

    cfg = SimulatorConfig(image_size=64, overlay_prob=0.0)
    out = []
    for i in range(n):
        r = render(seed * 10_000 + i, i, cfg)
        out.append((r["image"], r["params"]["geometry"]))
    return out


def write_ultrabench(root, n=90, n_test=30):
    """A labelled task in UltraBench's layout (``train_val.json``, ``test.json``, ``images/``)."""
    from PIL import Image

    d = root / "geometry_v1"
    (d / "images" / "scans").mkdir(parents=True)
    records = {"train_val": [], "test": []}
    for i, (img, geo) in enumerate(geometry_images(n + n_test, seed=1)):
        rel = f"scans/{i:03d}.png"
        Image.fromarray(img).save(d / "images" / rel)
        records["test" if i >= n else "train_val"].append({"image": rel, "label": geo})
    for split, recs in records.items():
        (d / f"{split}.json").write_text(json.dumps(recs))
    return d


def write_folders(root, n=90):
    """A labelled task as class folders."""
    from PIL import Image

    for i, (img, geo) in enumerate(geometry_images(n, seed=2)):
        (root / geo).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / geo / f"{i:03d}.png")
    (root / "README.txt").write_text("class folders")  # not a frame: reported as unread, not an error
    return root


def write_csv(root, n=90):
    """A labelled task as a CSV list (path, label, group)."""
    from PIL import Image

    (root / "img").mkdir(parents=True)
    with open(root / "list.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "group"])
        for i, (img, geo) in enumerate(geometry_images(n, seed=3)):
            Image.fromarray(img).save(root / "img" / f"{i:03d}.png")
            w.writerow([f"img/{i:03d}.png", geo, f"{geo}_patient{i // 6}"])  # ~2 images per patient
    return root / "list.csv"


def export_random(directory, seed):
    """A random smoke-size encoder at ``LABELLED_SIZE`` px, exported as training exports encoders."""
    from usjepa_jax.encoders import export_encoder
    from usjepa_jax.evaluation.features import random_encoder

    enc = random_encoder(eval_smoke_config().model, LABELLED_SIZE, seed=seed)
    export_encoder(directory, enc.module, enc.params, mean=0.5, std=0.5, image_size=LABELLED_SIZE)
    return directory


def random_vit(posemb="sincos2d", class_token=False, image=32, in_channels=1, seed=0):
    """A tiny ViT and random numpy params (norms and biases too, so that no mapping error can hide)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from usjepa_jax.models.vit import VisionTransformer

    module = VisionTransformer(width=32, depth=2, mlp_dim=64, num_heads=4, patch_size=8, posemb=posemb,
                               class_token=class_token)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jax.ShapeDtypeStruct((1, image, image, in_channels),
                                                                                 jnp.float32))["params"]
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: (0.2 * rng.normal(size=s.shape)).astype(np.float32), shapes)
    return module, params


def write_video(path, frames, codec="ffv1", fps=10):
    """A grayscale cine clip of ``frames`` (PyAV; the test is skipped without it)."""
    import pytest

    av = pytest.importorskip("av")
    h, w = frames[0].shape
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p" if codec != "ffv1" else "gray"
        for f in frames:
            frame = av.VideoFrame.from_ndarray(f, format="gray")
            for packet in stream.encode(frame.reformat(format=stream.pix_fmt)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
