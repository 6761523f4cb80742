"""Several encoders on several tasks, one results table: ``evaluate_table(config, encoders, tasks, out_dir)``.

Encoders (``encoder_specs.py``), ``[NAME=]WHAT[@SIZE]`` (``NAME`` labels the table row; ``SIZE`` the input resolution, default
``config.data.image_size``):

- ``student``, ``student:best``, ``student:STEP``: the run's (``--workdir``) final / lowest-validation-loss /
  step-``STEP`` student; ``teacher``: its frozen teacher; ``random``: a random init of ``config.model`` (the floor);
- a path: an exported encoder directory (``RUN/encoder``, or a ``convert``-ed checkpoint), another run's workdir,
  or a raw ViT checkpoint file (timm / I-JEPA / MAE ``.safetensors``, ``.npz``, ``.pth``; converted on load).

Tasks, comma separated: a simulated task by name (``lesion``, ...) or a real labelled task ``[NAME=]PATH``
(``labelled.py``: an UltraBench dataset folder, class folders, or a CSV/JSON list).

Every configured evaluator (``config.evals.evaluators``) runs on every (encoder, task), except
``speckle_invariance``, which needs the simulator's anatomy/speckle seeds: it runs once per encoder on the
simulator's invariance set, whatever the tasks (``results[encoder]["all"]``). Features are extracted
once per (encoder, task split, corruption) into ``OUT/features/<encoder hash>-<pooling>/`` and reused by every
evaluator and every later call (``features.FeatureStore``: resumable, images/s logged); real tasks are
preprocessed once per input size into ``CACHE`` (``labelled.py``). After each encoder the table (``table.py``:
``OUT/results.md``, ``.json``, ``.png``) is rewritten, so a long run can be watched; figures of each (encoder,
task) go to ``OUT/<encoder>/<task>/``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from usjepa_jax.errors import UserError
from usjepa_jax.evaluation import labelled, table
from usjepa_jax.evaluation.config import TASK_NAMES, validate_eval_config
from usjepa_jax.evaluation.data import EvalData
from usjepa_jax.evaluation.encoder_specs import EncoderSpec, load_encoder_spec, with_image_size
from usjepa_jax.evaluation.features import FeatureExtractor, FeatureStore
from usjepa_jax.evaluation.runner import TASK_FREE, by_task, run_evaluators
from usjepa_jax.evaluation.tasks import simulated_task_data

@dataclasses.dataclass(frozen=True)
class TaskRef:
    name: str
    spec: str  # a simulated task's name, or the labelled task spec
    simulated: bool

    @classmethod
    def parse(cls, spec: str) -> TaskRef:
        spec = spec.strip()
        if spec in TASK_NAMES:
            return cls(spec, spec, True)
        if not Path(spec.partition("=")[2] or spec).expanduser().exists():
            raise UserError(f"task {spec!r}: neither a simulated task ({', '.join(TASK_NAMES)}) nor an existing "
                            "path ([NAME=]PATH of an UltraBench folder, class folders or a CSV/JSON list)")
        parsed = labelled.TaskSpec.parse(spec)  # fails naming the path when it does not exist
        return cls(parsed.name, spec, False)


def evaluate_table(config: ml_collections.ConfigDict, encoders: Sequence[str | EncoderSpec],
                   tasks: Sequence[str | TaskRef], out_dir: str | Path, *, workdir: str | Path | None = None,
                   cache_dir: str | Path | None = None, log: Callable[[str], None] = print
                   ) -> dict[str, dict[str, dict[str, float]]]:
    """Run the configured evaluators on every (encoder, task) and write the results table into ``out_dir``;
    returns ``{encoder: {task: {evaluator/metric: value}}}``. Specs are parsed (and bad ones fail) before any
    compute."""
    validate_eval_config(config.evals)
    labelled_cfg = config.evals.get("labelled", None) or labelled.default_labelled_config()
    labelled.validate_labelled_config(labelled_cfg)  # (also done by validate_eval_config when present)
    enc_specs = [e if isinstance(e, EncoderSpec) else EncoderSpec.parse(e) for e in encoders]
    task_refs = [t if isinstance(t, TaskRef) else TaskRef.parse(t) for t in tasks]
    for kind, names in (("encoder", [e.name for e in enc_specs]), ("task", [t.name for t in task_refs])):
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"two {kind}s are named {dupes}: name them (NAME=...)")
    out = Path(out_dir)
    cache = Path(cache_dir) if cache_dir else out / "cache"
    results: dict[str, dict[str, dict[str, float]]] = {}
    enc_info: dict[str, dict[str, Any]] = {}
    task_info: dict[str, dict[str, Any]] = {}
    task_cache: dict[tuple[str, int], EvalData] = {}
    notes = [f"evaluators: {config.evals.evaluators}; probe seeds: {config.evals.probe.num_seeds}; "
             + f"pooling: {config.evals.pooling}"]

    def task_data(ref: TaskRef, size: int) -> EvalData:
        if (ref.name, size) not in task_cache:
            t = time.perf_counter()
            if ref.simulated:
                sized = with_image_size(config, size)
                data = simulated_task_data(ref.spec, sized.data, sized.evals)
            else:
                data = labelled.load_task(ref.spec, size, cache, labelled=labelled_cfg, data_config=config.data,
                                          logger=log)
            data.name = ref.name
            task_cache[(ref.name, size)] = data
            task_info[ref.name] = {"spec": ref.spec, "simulated": ref.simulated, "classes": list(data.class_names),
                                   "examples": {s: len(getattr(data, s)) for s in ("train", "val", "test")},
                                   "skipped": data.skipped}
            if data.skipped:  # in results.md too: a table over fewer images than the task lists says so
                notes.append(f"task {ref.name}: {len(data.skipped)} input files skipped (all in results.json, "
                             f"tasks.{ref.name}.skipped): " + "; ".join(f"{s['file']} ({s['reason']})"
                                                                         for s in data.skipped[:3]))
            log(f"task {ref.name}: {len(data.train)}/{len(data.val)}/{len(data.test)} train/val/test at {size} px "
                f"({time.perf_counter() - t:.1f}s)")
        return task_cache[(ref.name, size)]

    for spec in enc_specs:
        size = spec.size or int(config.data.image_size)
        t = time.perf_counter()
        model = load_encoder_spec(spec, config, workdir, size)
        sized = with_image_size(config, size)
        store_dir = out / "features" / f"{model.content_hash[:16]}-{config.evals.pooling}"
        store = FeatureStore(store_dir, FeatureExtractor(model, config.evals.pooling, config.evals.batch_size))
        enc_info[spec.name] = {"spec": dataclasses.asdict(spec), "path": str(model.path), "size": size,
                               "content_hash": model.content_hash, "width": model.module.width,
                               "features": str(store_dir)}
        log(f"encoder {spec.name}: {model.path} (width {model.module.width}, {size} px, hash "
            f"{model.content_hash[:12]}, {time.perf_counter() - t:.1f}s)")
        data = {ref.name: task_data(ref, size) for ref in task_refs}
        t = time.perf_counter()
        store.log = task_log = lambda m, p=f"[{spec.name}] ": log(p + m)
        metrics, figures = run_evaluators(model, sized, data=data, out_dir=out / spec.name, log=task_log,
                                          store=store)
        results[spec.name] = by_task(metrics)
        enc_info[spec.name]["figures"] = figures
        enc_info[spec.name]["seconds"] = time.perf_counter() - t
        log(f"[{spec.name}] done in {time.perf_counter() - t:.1f}s: probe macro-F1 " + ", ".join(
            f"{r.name} {results[spec.name][r.name].get('linear_probe/macro_f1_mean', float('nan')):.3f}"
            for r in task_refs))
        table.write_table(results, out, encoders=enc_info, tasks=task_info,
                          notes=notes + [f"{n}: once per encoder on the simulator (results[encoder]['all']), not "
                                         "per task" for n in TASK_FREE if n in config.evals.evaluators])
    return results
