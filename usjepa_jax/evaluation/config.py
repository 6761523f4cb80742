"""``default_eval_config()``: the ``config.evals`` subtree (which evaluators run, on how much data, with what settings).

Kept free of jax imports so that ``usjepa_jax/config.py`` can include it cheaply. Every key is overridable from
the command line, e.g. ``--config.evals.evaluators=linear_probe,knn --config.evals.probe.num_seeds=3``.
"""

from __future__ import annotations

import ml_collections

# Every evaluator, in the order they run (``evaluators`` names a subset, comma separated).
EVALUATOR_NAMES = ("collapse", "knn", "linear_probe", "few_shot", "robustness", "speckle_invariance",
                   "attentive_probe", "dense_probe")
POOLINGS = ("mean", "max", "mean_max")
CORRUPTIONS = ("blur", "contrast", "speckle")
TASK_NAMES = ("lesion", "organ", "margin", "grade")  # the simulated task suite (tasks.py)
DEFAULT_TASKS = "lesion,organ"  # the tasks kept at the base size (docs/regime.md: margin and grade are not)


def default_eval_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        # Comma-separated subset of EVALUATOR_NAMES (order does not matter; figures are drawn when figures=True).
        "evaluators": "collapse,knn,linear_probe,few_shot,robustness,speckle_invariance",
        "seed": 0,  # evaluation images come from seed streams disjoint from the pretraining train/val streams
        # Labelled simulated tasks (comma-separated subset of TASK_NAMES, tasks.py), each with balanced labels and
        # these many train/val/test images, rendered with config.data's simulator settings and resized to
        # config.data.image_size, like the pretraining inputs. Every evaluator but speckle_invariance runs per task.
        "tasks": DEFAULT_TASKS,
        "num_train": 2000, "num_val": 500, "num_test": 1000,
        "pooling": "mean",  # patch tokens -> one vector: mean | max | mean_max (concatenation)
        "batch_size": 64,  # feature-extraction batch (the last batch is padded: one compilation)
        "probe": {  # linear probe, the paper's protocol
            "lr": 1e-3, "weight_decay": 1e-4, "batch_size": 32, "max_epochs": 150, "patience": 15, "num_seeds": 5,
            "standardize": True,  # z-score features with the probe-train split's mean/std
        },
        # Readouts of the patch tokens (not in the default ``evaluators``: select ``attentive_probe`` /
        # ``dense_probe``). Protocols in evaluation/attentive.py and dense.py, docs/probes.md.
        "attentive": {  # one cross-attention block with a learned query (V-JEPA's attentive classifier)
            "lr": 1e-3, "weight_decay": 1e-3, "batch_size": 64, "max_epochs": 20, "patience": 5, "num_seeds": 5,
            "standardize": True, "num_heads": 4, "mlp_ratio": 4.0,
        },
        "dense": {  # per-patch linear map to the segmentation classes (simulated tissue map, real masks)
            "lr": 1e-3, "weight_decay": 1e-4, "batch_size": 64, "max_epochs": 50, "patience": 5, "num_seeds": 5,
            "standardize": True,
        },
        "few_shot": {"fractions": (0.01, 0.05, 0.1, 0.5, 1.0)},  # stratified, nested subsets of the train split
        # Cosine k-NN, votes weighted exp(sim / temperature). ``every`` > 0 also runs it as a monitor during
        # pretraining (train.py, evaluation/monitor.py) every that many steps, on its own smaller image sets.
        "knn": {"k": 20, "temperature": 0.07, "every": 0, "monitor_num_train": 500, "monitor_num_test": 250},
        "robustness": {
            "corruptions": "blur,contrast,speckle",
            "severities": (0, 1, 2, 3),  # 0 = clean (identity)
            "speckle_correlation": 1.5,  # pixels: the Gaussian smoothing of the speckle field K
        },
        # Speckle invariance: M anatomies x K speckle realisations each.
        "invariance": {"num_anatomies": 16, "num_speckles": 4},
        "figures": True, "num_figure_images": 4,
        # Real labelled tasks (evaluation/labelled.py; `python -m usjepa_jax.evaluate --tasks=NAME=PATH`): the
        # seeded stratified split of tasks without val / test splits (by recording: the frames of one file, or
        # of one `group` of a list, stay in one split), and how frames come out of containers.
        "labelled": {
            "val_fraction": 0.15,  # of the train groups, per class, when the task has no val split
            "test_fraction": 0.2,  # of all groups, per class, when the task has no test split
            "split_seed": 0,
            "video_stride": 1, "h5_key": "", "nifti_axis": -1,  # data/containers.py
            "on_error": "skip",  # an unreadable file: reported (log, cache manifest) and skipped, or 'raise'
            "workers": 0,  # decoder processes for the one-off preprocessing (0: in-process)
            # A segmentation task: the name of its masks (UltraBench: `mask`, or `<name>_mask` keys, or
            # masks/<name>/), read into the splits' segmentation for the dense probe; empty: classification only.
            "mask": "",
        },
    })


def task_list(evals: ml_collections.ConfigDict) -> list[str]:
    """The task names of ``config.evals.tasks`` (comma separated), validated, in the order given."""
    names = [n.strip() for n in str(evals.tasks).split(",") if n.strip()]
    unknown = [n for n in names if n not in TASK_NAMES]
    if unknown or not names:
        raise ValueError(f"config.evals.tasks={evals.tasks!r}: unknown tasks {unknown}; known: {TASK_NAMES} "
                         "(comma separated, at least one).")
    if len(set(names)) != len(names):
        raise ValueError(f"config.evals.tasks={evals.tasks!r}: a task is named twice.")
    return names


def evaluator_list(evals: ml_collections.ConfigDict) -> list[str]:
    names = [n.strip() for n in str(evals.evaluators).split(",") if n.strip()]
    unknown = [n for n in names if n not in EVALUATOR_NAMES]
    if unknown:
        raise ValueError(f"config.evals.evaluators: unknown {unknown}; known: {EVALUATOR_NAMES}.")
    return [n for n in EVALUATOR_NAMES if n in names]


def corruption_list(evals: ml_collections.ConfigDict) -> list[str]:
    names = [n.strip() for n in str(evals.robustness.corruptions).split(",") if n.strip()]
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        raise ValueError(f"config.evals.robustness.corruptions: unknown {unknown}; known: {CORRUPTIONS}.")
    return names


def validate_eval_config(evals: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming the key of any invalid value."""
    evaluator_list(evals)
    task_list(evals)
    corruption_list(evals)
    if evals.pooling not in POOLINGS:
        raise ValueError(f"config.evals.pooling={evals.pooling!r}: expected one of {POOLINGS}.")
    for key in ("num_train", "num_val", "num_test", "batch_size"):
        if evals[key] < 1:
            raise ValueError(f"config.evals.{key}={evals[key]} must be at least 1.")
    for name in ("probe", "attentive", "dense"):
        p = evals.get(name, None)
        for key in ("batch_size", "max_epochs", "num_seeds", "patience") if p is not None else ():
            if p[key] < 1:
                raise ValueError(f"config.evals.{name}.{key}={p[key]} must be at least 1.")
    if "attentive" in evals and evals.attentive.num_heads < 1:
        raise ValueError(f"config.evals.attentive.num_heads={evals.attentive.num_heads} must be at least 1.")
    if any(not 0 < f <= 1 for f in evals.few_shot.fractions):
        raise ValueError(f"config.evals.few_shot.fractions={evals.few_shot.fractions}: each in (0, 1].")
    if any(s not in (0, 1, 2, 3) for s in evals.robustness.severities):
        raise ValueError(f"config.evals.robustness.severities={evals.robustness.severities}: each in 0..3.")
    for key in ("k", "monitor_num_train", "monitor_num_test"):
        if evals.knn[key] < 1:
            raise ValueError(f"config.evals.knn.{key}={evals.knn[key]} must be at least 1.")
    if evals.knn.every < 0:
        raise ValueError(f"config.evals.knn.every={evals.knn.every} must be 0 (off) or a number of steps.")
    if evals.invariance.num_anatomies < 2 or evals.invariance.num_speckles < 2:
        raise ValueError("config.evals.invariance: num_anatomies and num_speckles must be at least 2.")
    if "labelled" in evals:
        validate_labelled_config(evals.labelled)


def validate_labelled_config(cfg: ml_collections.ConfigDict) -> None:
    for key in ("val_fraction", "test_fraction"):
        if not 0 < cfg[key] < 1:
            raise ValueError(f"config.evals.labelled.{key}={cfg[key]} must be in (0, 1).")
    if cfg.on_error not in ("skip", "raise"):
        raise ValueError(f"config.evals.labelled.on_error={cfg.on_error!r}: expected skip or raise.")
    for key, low in (("video_stride", 1), ("workers", 0)):
        if cfg[key] < low:
            raise ValueError(f"config.evals.labelled.{key}={cfg[key]} must be at least {low}.")


def shrink_for_smoke(evals: ml_collections.ConfigDict) -> None:
    """Tiny sizes for smoke configs and tests (seconds on a CPU): every evaluator still runs."""
    evals.num_train, evals.num_val, evals.num_test = 60, 30, 30
    evals.batch_size = 32
    evals.probe.max_epochs, evals.probe.patience, evals.probe.num_seeds = 20, 5, 2
    for name in ("attentive", "dense"):
        evals[name].max_epochs, evals[name].patience, evals[name].num_seeds = 10, 3, 2
    evals.few_shot.fractions = (0.1, 1.0)
    evals.knn.k = 5
    evals.knn.monitor_num_train, evals.knn.monitor_num_test = 40, 20
    evals.invariance.num_anatomies, evals.invariance.num_speckles = 4, 2
    evals.num_figure_images = 2
