"""Evaluators by name, run on one frozen encoder and every task: ``run_evaluators(encoder, config) -> {metric: value}``.

Each evaluator is a function ``(ctx: EvalContext) -> {name: float}``, ``ctx`` holding one task (``EvalData``);
the runner runs it on every task of ``config.evals.tasks`` (tasks.py) and prefixes the names with the task's and
the evaluator's (``lesion/linear_probe/macro_f1_mean``); ``speckle_invariance`` does not depend on a task and runs
once (``speckle_invariance/ratio``). ``EvalContext`` extracts each split's features once, trains the clean linear
probe once (shared by ``linear_probe`` and ``robustness``) and collects what the figures need; figures of a task
go to ``out_dir/<task>/``.

Evaluators (``config.evals.evaluators``):
- ``collapse``: per-dimension std, dead dimensions and RankMe of the pooled test embeddings;
- ``knn``: cosine k-NN (train -> test), accuracy / macro-F1 / balanced accuracy;
- ``linear_probe``: paper protocol (probe.py), macro-F1 / accuracy / balanced accuracy mean and std over seeds;
- ``few_shot``: the probe on stratified nested 1/5/10/50/100% subsets of the train split;
- ``robustness``: the clean probe tested under blur / contrast / speckle at each severity (corruptions.py),
  macro-F1 and its relative drop ``(clean - corrupted) / clean`` (0 at severity 0, where the images are clean);
- ``speckle_invariance``: M anatomies x K speckle seeds under one acquisition: within- vs across-anatomy cosine
  similarity and the between-anatomy share of the variance, of pooled embeddings and per patch (metrics.py);
- ``attentive_probe``: one cross-attention block with a learned query over the patch tokens (attentive.py),
  the linear probe's metrics;
- ``dense_probe``: a per-patch linear map to the segmentation (dense.py; the simulator's tissue map or a real
  task's masks), ``miou`` / ``dice`` / ``pixel_accuracy`` mean and std over seeds; nothing on a task without masks.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import ml_collections
import numpy as np

from usjepa_jax import storage
from usjepa_jax.encoders import FrozenEncoder
from usjepa_jax.evaluation import config as eval_config_lib
from usjepa_jax.evaluation import attentive, corruptions, dense, metrics, plots
from usjepa_jax.evaluation import tasks as tasks_lib
from usjepa_jax.evaluation.data import EvalData, render_invariance_set
from usjepa_jax.evaluation.features import FeatureExtractor, FeatureStore, pool
from usjepa_jax.evaluation.probe import (
    ProbeConfig,
    TrainedProbe,
    stratified_nested_subsets,
    train_probe,
)
from usjepa_jax.masks import MultiBlockMaskSampler, patch_valid_from_scan_mask
from usjepa_jax.visualize import save_mask_figure


class EvalContext:
    """``store``: a ``FeatureStore`` (one per encoder and pooling, with its extractor) keeping the pooled features
    on disk, keyed by the split and a fingerprint of its images (plus the corruption settings), so they are
    extracted once across calls and tasks; without one they are kept in memory for this run only."""

    def __init__(self, encoder: FrozenEncoder, config: ml_collections.ConfigDict, data: EvalData,
                 out_dir: str | Path | None = None, extractor: FeatureExtractor | None = None,
                 store: FeatureStore | None = None):
        self.encoder, self.config, self.evals, self.data = encoder, config, config.evals, data
        self.store = store
        self.extractor = (store.extractor if store else extractor) or FeatureExtractor(
            encoder, config.evals.pooling, config.evals.batch_size)
        self.probe_cfg = ProbeConfig.from_config(config.evals.probe)
        self.out_dir = storage.path(out_dir) if out_dir else None
        self.figures: dict[str, str] = {}
        self._features: dict[str, np.ndarray] = {}
        self._probe: TrainedProbe | None = None

    def _extract(self, key: str, images, store_key: Callable[[], str]) -> np.ndarray:
        if key not in self._features:
            if self.store is not None:
                self._features[key] = self.store.get(store_key(), images)
            else:
                self._features[key] = self.extractor(images() if callable(images) else images)
        return self._features[key]

    def _fingerprint(self, split: str) -> str:
        s = getattr(self.data, split)
        digest = hashlib.sha256(np.ascontiguousarray(s.image).tobytes())
        digest.update(np.ascontiguousarray(s.scan_mask).tobytes())
        return f"{split}-{len(s)}-{digest.hexdigest()[:16]}"

    def features(self, split: str) -> np.ndarray:
        return self._extract(split, getattr(self.data, split).image, lambda: self._fingerprint(split))

    def tokens(self, split: str) -> np.ndarray:
        """Patch tokens ``[N, T, D]`` of a split, extracted once (kept in memory only: T times the pooled size)."""
        key = f"tokens/{split}"
        if key not in self._features:
            self._features[key] = self.extractor.tokens(getattr(self.data, split).image)
        return self._features[key]

    def corrupted_features(self, name: str, severity: int) -> np.ndarray:
        """Features of the test images under corruption ``name`` at ``severity`` (0: the clean ones)."""
        if severity == 0:
            return self.features("test")
        test, r = self.data.test, self.evals.robustness
        settings = f"{name}-s{severity}-seed{self.evals.seed}-corr{r.speckle_correlation:g}"
        return self._extract(f"test/{settings}", lambda: corruptions.corrupt_batch(
            name, test.image, test.scan_mask, int(severity), self.evals.seed, r.speckle_correlation),
            lambda: f"{self._fingerprint('test')}-{settings}")

    def probe(self) -> TrainedProbe:
        if self._probe is None:
            self._probe = train_probe(self.features("train"), self.data.train.label, self.features("val"),
                                      self.data.val.label, self.data.num_classes, self.probe_cfg, self.evals.seed)
        return self._probe

    def figure_path(self, name: str) -> Path | None:
        if self.out_dir is None or not self.evals.figures:
            return None
        return self.out_dir / name


# ------------------------------------------------------------------------------------------------ evaluators
def eval_collapse(ctx: EvalContext) -> dict[str, float]:
    return metrics.collapse_metrics(ctx.features("test"))


def eval_knn(ctx: EvalContext) -> dict[str, float]:
    k = ctx.evals.knn
    return metrics.knn_metrics(ctx.features("train"), ctx.data.train.label, ctx.features("test"),
                               ctx.data.test.label, ctx.data.num_classes, k.k, k.temperature)


def _test_metrics(probe: TrainedProbe, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """A trained probe's test metrics (mean / std over seeds) and how long its seeds trained on average."""
    out = probe.evaluate(x, y)
    out.update(epochs_mean=float(probe.epochs.mean()), best_epoch_mean=float(probe.best_epoch.mean()))
    return out


def eval_linear_probe(ctx: EvalContext) -> dict[str, float]:
    probe = ctx.probe()
    out = _test_metrics(probe, ctx.features("test"), ctx.data.test.label)
    path = ctx.figure_path("probe_curves.png")
    if path is not None:
        ctx.figures["probe_curves"] = str(plots.save_probe_curves(probe.train_loss, probe.val_loss, path))
    return out


def eval_few_shot(ctx: EvalContext) -> dict[str, float]:
    fractions = tuple(float(f) for f in ctx.evals.few_shot.fractions)
    subsets = stratified_nested_subsets(ctx.data.train.label, fractions, ctx.evals.seed)
    x_tr, x_va, x_te = ctx.features("train"), ctx.features("val"), ctx.features("test")
    out, means, stds = {}, [], []
    for f, idx in subsets.items():
        probe = ctx.probe() if len(idx) == len(x_tr) else train_probe(
            x_tr[idx], ctx.data.train.label[idx], x_va, ctx.data.val.label, ctx.data.num_classes, ctx.probe_cfg,
            ctx.evals.seed)
        m = probe.evaluate(x_te, ctx.data.test.label)
        tag = f"{100 * f:g}pct"
        out[f"{tag}/macro_f1_mean"], out[f"{tag}/macro_f1_std"] = m["macro_f1_mean"], m["macro_f1_std"]
        out[f"{tag}/num_examples"] = float(len(idx))
        means.append(m["macro_f1_mean"])
        stds.append(m["macro_f1_std"])
    path = ctx.figure_path("few_shot.png")
    if path is not None:
        ctx.figures["few_shot"] = str(plots.save_few_shot_curve(list(subsets), means, stds, path))
    return out


def eval_robustness(ctx: EvalContext) -> dict[str, float]:
    r = ctx.evals.robustness
    probe, test = ctx.probe(), ctx.data.test
    out, bars = {}, {}
    clean = probe.evaluate(ctx.features("test"), test.label)["macro_f1_mean"]
    for name in eval_config_lib.corruption_list(ctx.evals):
        bars[name] = {}
        for sev in r.severities:
            m = probe.evaluate(ctx.corrupted_features(name, int(sev)), test.label)
            out[f"{name}/s{sev}/macro_f1_mean"], out[f"{name}/s{sev}/macro_f1_std"] = (m["macro_f1_mean"],
                                                                                       m["macro_f1_std"])
            out[f"{name}/s{sev}/relative_drop"] = (clean - m["macro_f1_mean"]) / clean if clean > 0 else 0.0
            bars[name][int(sev)] = (m["macro_f1_mean"], m["macro_f1_std"])
        worst = [v[0] for s, v in bars[name].items() if s > 0]
        if worst and 0 in bars[name]:
            out[f"{name}/mean_drop"] = float(bars[name][0][0] - np.mean(worst))
    path = ctx.figure_path("robustness.png")
    if path is not None:
        ctx.figures["robustness"] = str(plots.save_robustness_bars(bars, path))
    return out


def eval_speckle_invariance(ctx: EvalContext) -> dict[str, float]:
    inv = ctx.evals.invariance
    s = render_invariance_set(ctx.config.data, inv.num_anatomies, inv.num_speckles, ctx.evals.seed)
    m, k = s["image"].shape[:2]
    images = s["image"].reshape((m * k,) + s["image"].shape[2:])
    tokens = ctx.extractor.tokens(images)
    x = np.asarray(pool(tokens, ctx.evals.pooling))
    patch = ctx.encoder.module.patch_size
    grid = (s["scan_mask"].shape[0] // patch, s["scan_mask"].shape[1] // patch)
    inside = patch_valid_from_scan_mask(s["scan_mask"], grid, whole=True)  # patches entirely inside the scan
    return metrics.speckle_invariance(x.reshape(m, k, -1), tokens[:, inside].reshape(m, k, int(inside.sum()), -1))


def eval_attentive_probe(ctx: EvalContext) -> dict[str, float]:
    a = ctx.evals.attentive
    head = attentive.AttentiveHead(int(a.num_heads), float(a.mlp_ratio))
    probe = attentive.train_attentive_probe(ctx.tokens("train"), ctx.data.train.label, ctx.tokens("val"),
                                            ctx.data.val.label, ctx.data.num_classes, ProbeConfig.from_config(a),
                                            head, ctx.evals.seed)
    return _test_metrics(probe, ctx.tokens("test"), ctx.data.test.label)


def eval_dense_probe(ctx: EvalContext) -> dict[str, float]:
    d = ctx.data
    if any(s.segmentation is None for s in (d.train, d.val, d.test)):
        return {}  # a task without masks (a real classification task): nothing to segment
    num_classes = int(max(s.segmentation.max() for s in (d.train, d.val, d.test))) + 1
    probe = dense.train_dense_probe(ctx.tokens("train"), d.train.segmentation, ctx.tokens("val"),
                                    d.val.segmentation, num_classes, ctx.encoder.module.patch_size,
                                    ProbeConfig.from_config(ctx.evals.dense), ctx.evals.seed)
    out = probe.evaluate(ctx.tokens("test"), d.test.segmentation)
    out.update(epochs_mean=float(probe.probe.epochs.mean()), num_classes=float(num_classes))
    return out


EVALUATORS: dict[str, Callable[[EvalContext], dict[str, float]]] = {
    "collapse": eval_collapse, "knn": eval_knn, "linear_probe": eval_linear_probe, "few_shot": eval_few_shot,
    "robustness": eval_robustness, "speckle_invariance": eval_speckle_invariance,
    "attentive_probe": eval_attentive_probe, "dense_probe": eval_dense_probe}
assert tuple(EVALUATORS) == eval_config_lib.EVALUATOR_NAMES
TASK_FREE = ("speckle_invariance",)  # evaluators with their own data, run once per encoder, not per task


def feature_figures(ctx: EvalContext) -> None:
    """Input with a context/target mask sample overlaid, and the PCA of the patch features beside the input."""
    if ctx.out_dir is None or not ctx.evals.figures:
        return
    n = min(ctx.evals.num_figure_images, len(ctx.data.test))
    images, scan = ctx.data.test.image[:n], ctx.data.test.scan_mask[:n]
    patch = ctx.encoder.module.patch_size
    grid = (images.shape[1] // patch, images.shape[2] // patch)
    try:
        sampler = MultiBlockMaskSampler.from_config(ctx.config.masks, grid)
        rng = np.random.default_rng(ctx.evals.seed)
        samples = [sampler(rng, scan_mask=m) for m in scan]
        ctx.figures["masks"] = str(save_mask_figure(list(images), samples, patch, ctx.out_dir / "masks.png"))
    except ValueError as e:  # a mask config that does not fit this grid: skip the figure, not the evaluation
        ctx.figures["masks_error"] = str(e)
    tokens = ctx.extractor.tokens(images)
    ctx.figures["pca"] = str(plots.save_pca_figure(images, tokens, patch, ctx.out_dir / "pca_features.png",
                                                   title="input / PCA of patch features (RGB = PC 1-3)"))


def render_tasks(config: ml_collections.ConfigDict, log: Callable[[str], None] | None = None
                 ) -> dict[str, EvalData]:
    """The tasks of ``config.evals.tasks``, rendered (``{task: EvalData}``): render once, evaluate many encoders."""
    out = {}
    for name in tasks_lib.task_list(config.evals):
        t = time.perf_counter()
        out[name] = tasks_lib.simulated_task_data(name, config.data, config.evals)
        if log:
            log(f"task {name}: rendered {len(out[name].train)}/{len(out[name].val)}/{len(out[name].test)} "
                f"images in {time.perf_counter() - t:.1f}s")
    return out


def run_evaluators(encoder: FrozenEncoder, config: ml_collections.ConfigDict,
                   data: dict[str, EvalData] | EvalData | None = None, out_dir: str | Path | None = None,
                   log: Callable[[str], None] | None = None, store: FeatureStore | None = None
                   ) -> tuple[dict[str, float], dict[str, str]]:
    """Run ``config.evals.evaluators`` on ``encoder`` and every task; returns (``{task/evaluator/metric: value}``
    plus the task-free ``{speckle_invariance/metric: value}``, figures written ``{task/figure: path}``).

    ``data``: pre-rendered tasks (``{task: EvalData}``, or one ``EvalData`` keyed by its ``name``), to share them
    between encoders; the tasks of ``config.evals.tasks`` are rendered if None.
    ``store``: keep the features on disk (``FeatureStore``, with its extractor: one per encoder), reused by later
    calls.
    """
    evals = config.evals
    eval_config_lib.validate_eval_config(evals)
    log = log or (lambda msg: None)
    if data is None:
        data = render_tasks(config, log)
    elif isinstance(data, EvalData):
        data = {data.name: data}
    out_dir = storage.path(out_dir) if out_dir else None
    # One compilation for all tasks.
    extractor = store.extractor if store else FeatureExtractor(encoder, evals.pooling, evals.batch_size)
    names = eval_config_lib.evaluator_list(evals)
    results: dict[str, float] = {}
    figures: dict[str, str] = {}

    def run(name: str, ctx: EvalContext, prefix: str) -> None:
        t = time.perf_counter()
        values = EVALUATORS[name](ctx)
        results.update({f"{prefix}{name}/{k}": float(v) for k, v in values.items()})
        results[f"{prefix}{name}/seconds"] = time.perf_counter() - t
        log(f"{prefix}{name} ({results[f'{prefix}{name}/seconds']:.1f}s): " + ", ".join(
            f"{k}={v:.4g}" for k, v in values.items() if not k.endswith("_std"))[:400])

    ctx = None
    for task, task_data in data.items():
        ctx = EvalContext(encoder, config, task_data, out_dir / task if out_dir else None, extractor, store)
        for name in names:
            if name not in TASK_FREE:
                run(name, ctx, f"{task}/")
        feature_figures(ctx)
        figures.update({f"{task}/{k}": v for k, v in ctx.figures.items()})
    for name in names:
        if name in TASK_FREE:
            ctx = EvalContext(encoder, config, next(iter(data.values())), out_dir, extractor, store)
            run(name, ctx, "")
            figures.update(ctx.figures)
    return results, figures


def by_task(results: dict[str, float]) -> dict[str, dict[str, float]]:
    """``{task/evaluator/metric: v}`` -> ``{task: {evaluator/metric: v}}`` (task-free metrics under ``"all"``):
    how results.json stores them, readable."""
    out: dict[str, dict[str, float]] = {}
    for key, value in results.items():
        head, _, rest = key.partition("/")
        task, metric = ("all", key) if head in EVALUATORS else (head, rest)
        out.setdefault(task, {})[metric] = value
    return out


def flat(nested: dict[str, dict[str, float]]) -> dict[str, float]:
    """The inverse of ``by_task``."""
    return {(k if task == "all" else f"{task}/{k}"): v for task, m in nested.items() for k, v in m.items()}
