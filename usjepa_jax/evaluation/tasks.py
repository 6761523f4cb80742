"""The suite of labelled simulated tasks (a simulated UltraBench): ``simulated_task_data(name, data_config, evals)``.

Tasks (``TASK_NAMES``; classes from ``data/synthetic.TASK_CLASSES``):
- ``lesion``: lesion type (none / cyst / hypoechoic / hyperechoic / calcified);
- ``organ``: the kind of scene (phantom family with its own layout);
- ``margin``: a lesion's shape (smooth vs lobulated / spiculated) at equal size and contrast;
- ``grade``: a diffuse texture grade (fatty-liver-like echogenicity increase with depth attenuation).

Each task has fixed train / val / test splits by anatomy seed: example ``i`` of split ``s`` of task ``t`` has
anatomy seed ``derive_seed(evals.seed, TASK_STREAMS[t], SPLIT_STREAMS[s], i, 0)`` and speckle seed ``(..., i, 1)``,
a seed stream disjoint from the other splits, the other tasks, the generic evaluation streams (``data.EVAL_STREAMS``)
and pretraining (``derive_seed(config.seed, 0|1|2)``), so no evaluation anatomy was seen in pretraining and no test
anatomy in probe training. Labels are balanced: the label is drawn first (each split holds ``num // C`` or one more
of every class, in a seeded random order) and passed to the simulator as the ``scene``, which renders a phantom of
that class; the label the simulator reports back is checked against it.

Framing (``config.data.framing``, data/framing.py): the tasks named in ``framing.tasks`` (``lesion`` and
``margin`` by default) are views framed on the lesion site, as clinical lesion datasets are framed (for "none"
the site its lesion would have had), cut from a render at ``framing.render_size`` with the window's jitter;
``organ`` and ``grade`` are whole scans. ``--config.data.framing.tasks=''`` gives the whole-scan tasks as before.

Images go through the pipeline's ``ToModelInput`` (resize to ``config.data.image_size``, as the pretraining inputs);
the segmentation (tissue codes, ``synthetic.SEGMENTATION_NAMES``) is kept, resized nearest, for the oracle.
The result is an ``EvalData`` (``data.py``), which every evaluator reads; real labelled tasks (``labelled.py``) build
the same type. The rows of a task table that are not encoders (the oracle, raw pixels) are ``baselines.py``'s.

``config.evals.tasks`` names the tasks to evaluate (comma separated, ``task_list`` validates them).
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from usjepa_jax.data import framing, synthetic
from usjepa_jax.data.pipeline import ToModelInput
from usjepa_jax.data.settings import simulator_config
from usjepa_jax.evaluation.config import TASK_NAMES, task_list
from usjepa_jax.evaluation.data import EvalData, Split, resize_nearest

__all__ = ["TASK_NAMES", "simulated_task_data", "simulated_task_split", "task_class_names", "task_list"]

# Seed streams: > 200, disjoint from data.EVAL_STREAMS (103) and the pretraining streams (0, 1, 2).
TASK_STREAMS = {"lesion": 200, "organ": 201, "margin": 202, "grade": 203}
SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}
# The simulator parameters that define a label the segmentation does not hold (the oracle of a diffuse grade:
# the parenchyma's echogenicity and attenuation), read from ``render(...)["params"]`` when present.
LABEL_PARAMETERS = {"grade": ("host_echo_db", "host_atten_db_cm_mhz"),
                    "margin": ("margin_low_harmonics", "margin_high_harmonics")}
assert tuple(TASK_STREAMS) == TASK_NAMES


def task_class_names(name: str) -> tuple[str, ...]:
    """The classes of task ``name``, as the simulator defines them."""
    classes = getattr(synthetic, "TASK_CLASSES", None)
    if classes is None:  # a simulator without the task suite: only the lesion type exists
        if name == "lesion":
            return tuple(synthetic.CLASS_NAMES)
        raise ValueError(f"Task {name!r} needs the simulator's phantom families (data/synthetic.TASK_CLASSES), "
                         "which this version of the simulator does not have; only 'lesion' is available.")
    if name not in classes:
        raise ValueError(f"Task {name!r}: the simulator defines {tuple(classes)} (data/synthetic.TASK_CLASSES).")
    return tuple(classes[name])


def anatomy_seeds(name: str, split: str, num: int, seed: int) -> tuple[list[int], list[int]]:
    """(anatomy seeds, speckle seeds) of the ``num`` examples of one split of one task."""
    base = (seed, TASK_STREAMS[name], SPLIT_STREAMS[split])
    return ([synthetic.derive_seed(*base, i, 0) for i in range(num)],
            [synthetic.derive_seed(*base, i, 1) for i in range(num)])


def balanced_labels(num: int, num_classes: int, seed: int) -> np.ndarray:
    """``num`` labels, every class ``num // num_classes`` times (the first ``num % num_classes`` once more), in a
    seeded random order."""
    labels = np.arange(num) % num_classes
    return np.random.default_rng(seed).permutation(labels).astype(np.int32)


def render_example(name: str, label: int, anatomy_seed: int, speckle_seed: int,
                   sim: synthetic.SimulatorConfig, view: framing.Framing | None = None) -> dict:
    """One rendered phantom of class ``label`` of task ``name`` (the simulator's output dict): a whole scan, or
    with ``view`` a view framed on the lesion site (data/framing.py)."""
    if hasattr(synthetic, "TASK_CLASSES"):
        scene = {name: int(label)}
        out = (synthetic.render(anatomy_seed, speckle_seed, sim, scene=scene) if view is None
               else framing.render_framed(anatomy_seed, speckle_seed, sim, view, scene=scene))
        got = int(out["labels"][name])
    else:  # the lesion type of the older simulator: fix the class through its class probabilities
        probs = tuple(float(c == label) for c in range(len(synthetic.CLASS_NAMES)))
        out = synthetic.render(anatomy_seed, speckle_seed, dataclasses.replace(sim, class_probs=probs))
        got = int(out["label"])
    if got != label:
        raise RuntimeError(f"Task {name!r}: asked the simulator for class {label}, it rendered {got} "
                           f"(anatomy seed {anatomy_seed}).")
    return out


def simulated_task_split(name: str, data_config: ml_collections.ConfigDict, split: str, num: int,
                         seed: int) -> Split:
    """Split ``split`` (train / val / test) of task ``name``: ``num`` balanced examples at the model's input size,
    with their segmentation and anatomy seeds."""
    if split not in SPLIT_STREAMS:
        raise ValueError(f"split={split!r}: expected one of {tuple(SPLIT_STREAMS)}.")
    num_classes = len(task_class_names(name))
    sim = simulator_config(data_config)
    to_input = ToModelInput(data_config.image_size)
    labels = balanced_labels(num, num_classes, synthetic.derive_seed(seed, TASK_STREAMS[name],
                                                                     SPLIT_STREAMS[split], 2**20))
    a_seeds, s_seeds = anatomy_seeds(name, split, num, seed)
    images, masks, segs, params = [], [], [], []
    keys = LABEL_PARAMETERS.get(name, ())
    view = framing.task_framing(data_config, name)
    for label, a, s in zip(labels, a_seeds, s_seeds):
        out = render_example(name, int(label), a, s, sim, view)
        item = to_input.map({"image": out["image"], "scan_mask": out["scan_mask"], "label": label, "index": 0})
        images.append(item["image"])
        masks.append(item["scan_mask"])
        segs.append(resize_nearest(out["segmentation"], data_config.image_size))
        params.append([float(out["params"][k]) for k in keys if k in out.get("params", {})])
    return Split(np.stack(images), np.stack(masks).astype(bool), labels, segmentation=np.stack(segs),
                 anatomy_seed=np.asarray(a_seeds, np.uint64),
                 label_parameters=np.asarray(params, np.float32) if params and params[0] else None)


def simulated_task_data(name: str, data_config: ml_collections.ConfigDict,
                        evals: ml_collections.ConfigDict) -> EvalData:
    """Task ``name``'s train / val / test splits (``evals.num_train`` / ``num_val`` / ``num_test`` examples, seed
    ``evals.seed``), rendered with ``data_config``'s simulator settings at ``data_config.image_size``.

    Public entry point for every consumer of the simulated tasks (the evaluation runner, experiments/task_suite.py,
    the real-data task table): returns the same ``EvalData`` type as a real labelled dataset.
    """
    classes = task_class_names(name)
    splits = [simulated_task_split(name, data_config, split, int(evals[f"num_{split}"]), int(evals.seed))
              for split in ("train", "val", "test")]
    return EvalData(*splits, num_classes=len(classes), class_names=classes, name=name)
