"""Sweeps that run in parts: methods x pretraining seeds, one results file per finished run, one table from them.

    python experiments/sweep.py --out=/tmp/sweep --seeds=3 \\
        --method=usjepa=configs/base.py --method=ijepa=configs/ijepa_ema.py --method=mae=configs/mae.py
    python experiments/sweep.py --out=/tmp/sweep ... --shard=0/2    # on machine 0 of 2 (machine 1: --shard=1/2)
    python experiments/sweep.py --out=/tmp/sweep --assemble_only    # the table from whatever has finished
    python experiments/sweep.py --out=/tmp/sweep_smoke --seeds=2 \\
        --method=usjepa=configs/base.py:smoke --method=ijepa=configs/ijepa_ema.py:smoke      # minutes, docs/sweeps.md

A method is ``NAME=CONFIG[:ARG] [--config.KEY=VALUE ...]``: a config file, as ``usjepa_jax.main`` takes it, plus
overrides, so one config under two settings is two methods (``--method="lr3=configs/base.py --config.optim.lr_peak
=3e-3"``); ``{seed}`` in a string value becomes the run's pretraining seed (a teacher trained per seed:
``--config.teacher.checkpoint=/t/runs/ijepa_seed{seed}/encoder_ema``). The runs (``run_list``) are every method x every pretraining seed (``config.seed`` = 0 .. seeds-1:
init, masks and batch order; the data is the same for every seed, see below), plus the baselines: a random init
of the first method's encoder per seed, the raw pixels and the oracle once (their features have no seed; the
probe seeds are inside every run). Each run has a folder ``OUT/runs/<name>/``: training's workdir (checkpoints,
exported encoder, ``eval/``) and, once the run is evaluated, ``results.json``, written atomically (a temporary
file renamed), so its presence means "finished". A rerun skips finished runs and resumes the others from their
latest checkpoint (``train.train_and_evaluate``, which resumes exactly). ``--shard=i/n`` keeps every n-th run
from the i-th of a fixed order, so n machines sharing OUT (or copying their ``OUT/runs/`` together) cover the
sweep once.

After the runs, and with ``--assemble_only`` at any time, ``assemble`` reads every results file there is and
writes ``OUT/table.md``, ``OUT/table.json`` and ``OUT/table.png``: per row (a method, a method's stage-1 teacher,
a baseline) and metric, the mean and sample std over pretraining seeds, with the number of seeds each cell holds
(``n=2/3``: two of three finished). Every metric the evaluators return is in the JSON; the markdown and the plot
show the metrics matching ``--metrics`` (a task's ``evaluator/metric``), one table per metric, tasks as columns:
a new task, evaluator or metric reaches the table without a change here.

Pre-rendered data: pretraining on the simulator renders every image on the CPU that also trains. With
``--prerender`` (default on) the simulated pretraining images (``data.num_train + data.num_val``, one simulator
seed) are rendered once into ``OUT/data/<settings hash>/`` (the prepared ArrayRecord format,
``data/synthetic.py:prerender``), and every run whose config names the simulator reads them there
(``data.source='prepared'``); the validation images are a hash-based hold-out of about ``data.num_val`` of them.
So the seeds of a sweep differ in init, masks and order, not in their images, and nothing is rendered twice.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from absl import app, flags, logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere in the repo

RUNS_DIR, DATA_DIR, RESULTS_FILE, PLAN_FILE = "runs", "data", "results.json", "plan.json"
TABLE_MD, TABLE_JSON, TABLE_PNG = "table.md", "table.json", "table.png"
BASELINES = ("random", "raw_pixels", "oracle")
# The markdown and plot show these metrics (fnmatch patterns over a task's ``evaluator/metric``); table.json has all.
DEFAULT_METRICS = ("*probe/macro_f1_mean", "*/miou_mean", "*/dice_mean", "knn/macro_f1")
ROW_ORDER_LAST = ("random", "raw_pixels", "oracle")  # baselines below the methods, the ceiling last


@dataclasses.dataclass(frozen=True)
class Run:
    """One unit of a sweep: a training run of ``method`` at pretraining ``seed``, or a baseline (``kind``)."""

    name: str  # the folder under OUT/runs
    method: str  # the method's name, or the baseline's
    seed: int
    kind: str = "train"  # train | random | raw_pixels | oracle


def run_list(methods: Sequence[str], seeds: int, baselines: Iterable[str] = ("random", "raw_pixels")) -> list[Run]:
    """Every method x seed, then the baselines (the random init per seed, features without a seed once), in one
    fixed order: sharding and progress depend on it."""
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)} (known: {BASELINES})")
    if set(methods) & set(BASELINES) or len(set(methods)) != len(methods):
        raise ValueError(f"methods {list(methods)}: names must be distinct and not a baseline's {BASELINES}")
    runs = [Run(f"{m}_seed{s}", m, s) for m in methods for s in range(seeds)]
    for b in baselines:
        runs += [Run(f"random_seed{s}", b, s, b) for s in range(seeds)] if b == "random" else [Run(b, b, 0, b)]
    return runs


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``."""
    i, slash, n = text.partition("/")
    if not (slash and i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
        raise ValueError(f"--shard={text!r}: expected i/n with 0 <= i < n (e.g. 0/2)")
    return int(i), int(n)


def shard(runs: Sequence[Run], i: int, n: int) -> list[Run]:
    """Runs ``i, i + n, i + 2n, ...`` of the list: the n shards are disjoint, cover it, and interleave the
    methods, so every machine finishes some seeds of each method early."""
    return list(runs[i::n])


def results_path(out: str | Path, run: Run) -> Path:
    return Path(out) / RUNS_DIR / run.name / RESULTS_FILE


def write_json_atomic(path: Path, obj) -> None:
    """Write to a temporary file and rename it: a killed process leaves the old file or none, never half a one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)


def config_fingerprint(config) -> str:
    return hashlib.sha256(config.to_json_best_effort(sort_keys=True).encode()).hexdigest()[:16]


def finished(out: str | Path, run: Run, fingerprint: str | None = None) -> bool:
    """Has ``run`` written its results? A results file from another config is an error, not a finished run:
    mixing two settings in one cell would be silent."""
    path = results_path(out, run)
    if not path.exists():
        return False
    saved = json.loads(path.read_text()).get("config_fingerprint")
    if fingerprint and saved and saved != fingerprint:
        raise RuntimeError(f"{path} was written under another config ({saved}, now {fingerprint}): use another "
                           "--out, or delete that run's folder to redo it.")
    return True


# ------------------------------------------------------------------------------------------------ one run
def prerendered(config, out: str | Path, log: Callable[[str], None] = logging.info):
    """``config`` reading its simulated pretraining images from one rendering under ``OUT/data`` (rendered here
    the first time, into a temporary folder renamed when complete); other data sources are returned unchanged."""
    if config.data.source != "synthetic":
        return config
    from usjepa_jax.data import framing
    from usjepa_jax.data.settings import simulator_config
    from usjepa_jax.data.synthetic import SyntheticUltrasoundSource, prerender

    num = config.data.num_train + config.data.num_val
    sim = simulator_config(config.data)
    fraction = framing.framing_config(config.data)["fraction"]
    settings = [dataclasses.asdict(sim), num]
    if fraction > 0:  # the pretraining mixture of whole scans and framed views, as make_source draws it
        view = framing.framing_from_config(config.data)
        source = framing.FramedMixtureSource(num, 0, sim, view, fraction)
        settings += [dataclasses.asdict(view), fraction]
    else:
        source = SyntheticUltrasoundSource(num, 0, sim)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    folder = Path(out) / DATA_DIR / f"synthetic-{key.hexdigest()[:12]}"
    if not folder.exists():
        t = time.perf_counter()
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        prerender(tmp, num, progress=False, source=source)
        try:
            os.replace(tmp, folder)
        except OSError:  # another shard sharing OUT renamed its identical rendering first: use that one
            if not folder.exists():
                raise
            shutil.rmtree(tmp)
        log(f"pre-rendered {num} pretraining images into {folder} in {time.perf_counter() - t:.0f}s")
    config = config.copy_and_resolve_references()
    config.data.source, config.data.paths = "prepared", [str(folder.resolve())]
    config.data.val_fraction = config.data.num_val / num  # held out by file hash: about num_val images
    return config


def with_seed_in_strings(config, seed: int):
    """``config`` with ``{seed}`` in its string values replaced by ``seed``: what a run of one pretraining seed
    takes from a run of the same seed (``--config.teacher.checkpoint=OUT/runs/ijepa_seed{seed}/encoder_ema``)."""
    import ml_collections

    def fill(node):
        for key, value in node.items():
            if isinstance(value, ml_collections.ConfigDict):
                fill(value)
            elif isinstance(value, str) and "{seed}" in value:
                node[key] = value.replace("{seed}", str(seed))
        return node

    return fill(config)


def train_and_measure(run: Run, config, workdir: Path, data: dict) -> dict[str, dict[str, float]]:
    """Train (or resume) one method's run, then evaluate its student (and a stage-1 teacher trained here) on the
    shared tasks ``data``: ``{row: {task/evaluator/metric: value}}``."""
    from usjepa_jax import train
    from usjepa_jax.evaluation.entry import evaluate_run

    train.train_and_evaluate(config, workdir)
    return {row: evaluate_run(config, workdir, encoder, data=data)
            for row, encoder in trained_rows(run.method, config).items()}


def trained_rows(method: str, config) -> dict[str, str]:
    """The table rows a trained run of ``method`` gives, each with the encoder (``evaluate``'s name) behind it."""
    from usjepa_jax import config as config_lib

    rows = {method: "student"}
    if config_lib.stage1_config(config) is not None:  # a stage 1 (SALT's teacher) ran in workdir/teacher
        rows[f"{method}_teacher"] = "teacher"
    if config.method == "ijepa":  # its EMA encoder, the one the I-JEPA paper evaluates
        rows[f"{method}_ema"] = "ema"
    return rows


def measure_baseline(run: Run, config, workdir: Path, data: dict) -> dict[str, dict[str, float]]:
    """A baseline's metrics on the shared tasks: the random init of ``config.model`` (``config.seed``), or probes
    on the raw pixels or on the oracle's features (the phantom; the ceiling of each task)."""
    if run.kind == "random":
        from usjepa_jax.evaluation.entry import evaluate_run
        return {"random": evaluate_run(config, workdir, "random", data=data)}
    from usjepa_jax.evaluation import dense
    from usjepa_jax.evaluation.config import evaluator_list
    from usjepa_jax.evaluation.features import pixel_tokens
    from usjepa_jax.evaluation.probe import ProbeConfig
    from usjepa_jax.evaluation.baselines import oracle_features, probe_on, raw_pixel_features, token_readouts
    from usjepa_jax.models.vit import parse_variant

    patch = parse_variant(config.model.variant)["patch_size"]  # the encoders' grid: the same token readouts
    evaluators = set(evaluator_list(config.evals))  # validated, whitespace stripped
    readouts = {name for name in ("attentive", "dense") if f"{name}_probe" in evaluators}
    row = {}
    for task, d in data.items():
        num_codes = int(max(s.segmentation.max() for s in (d.train, d.val, d.test))) + 1
        featurize, tokens = {  # per split: features for the linear probe, tokens [N, T, D] for the others
            "raw_pixels": (raw_pixel_features, lambda s: pixel_tokens(s.image, patch)),
            "oracle": (lambda s: oracle_features(s, num_codes),
                       lambda s: dense.patch_targets(s.segmentation, patch, num_codes))}[run.kind]
        m = probe_on(d, featurize, ProbeConfig.from_config(config.evals.probe), config.evals.seed)
        row.update({f"{task}/linear_probe/{k}": v for k, v in m.items()})
        for name, metrics in token_readouts(d, tokens, patch, config, readouts, run.kind == "oracle").items():
            row.update({f"{task}/{name}_probe/{k}": v for k, v in metrics.items()})
    if run.kind == "raw_pixels" and "speckle_invariance" in config.evals.evaluators:
        row.update(raw_pixel_invariance(config))
    return {run.kind: row}


def raw_pixel_invariance(config) -> dict[str, float]:
    """The speckle invariance of the pixels themselves, as the encoders' is measured: pooled = the whole image,
    per patch = the pixels of each patch of the encoders' grid inside the scan."""
    from usjepa_jax.evaluation import metrics
    from usjepa_jax.evaluation.data import render_invariance_set
    from usjepa_jax.masks import patch_valid_from_scan_mask
    from usjepa_jax.models.vit import parse_variant

    inv = config.evals.invariance
    s = render_invariance_set(config.data, inv.num_anatomies, inv.num_speckles, config.evals.seed)
    m, k, size = s["image"].shape[:3]
    p = parse_variant(config.model.variant)["patch_size"]
    g = size // p
    x = s["image"][..., 0].astype(np.float32) / 255
    patches = x.reshape(m, k, g, p, g, p).transpose(0, 1, 2, 4, 3, 5).reshape(m, k, g * g, p * p)
    inside = patch_valid_from_scan_mask(s["scan_mask"], (g, g), whole=True)
    return {f"speckle_invariance/{key}": v for key, v in
            metrics.speckle_invariance(x.reshape(m, k, -1), patches[:, :, inside]).items()}


def measure(run: Run, config, workdir: Path, data: dict) -> dict[str, dict[str, float]]:
    """The default way to run one unit of a sweep (``run_sweep``'s ``measure``)."""
    return (train_and_measure if run.kind == "train" else measure_baseline)(run, config, workdir, data)


# ------------------------------------------------------------------------------------------------ the sweep
def run_sweep(runs: Sequence[Run], configs: dict, out: str | Path, *, prerender: bool = True,
              render: Callable[[], dict] | None = None, measure: Callable = measure,
              after_each: Callable[[], object] | None = None, log: Callable[[str], None] = logging.info
              ) -> list[Run]:
    """Run every unfinished run of ``runs`` (finished = its results file exists); returns the runs done here.

    ``configs``: the config of each method; a baseline uses the first method's (its model, data and evals). Each
    run's config is its method's with ``seed`` set (and the pre-rendered data, ``prerender``). ``render()``
    gives the evaluation tasks (``{task: EvalData}``; default: ``render_tasks`` of the first config), rendered
    once, when the first run needs them, and shared by every run so the rows differ only in the encoder.
    ``measure(run, config, workdir, data) -> {row: metrics}``: how one run is trained and evaluated;
    ``after_each()``: called after each finished run (e.g. ``assemble``, so a long sweep can be watched).
    """
    out = Path(out)
    reference = next(iter(configs.values()))
    run_configs = {}
    for run in runs:
        cfg = (configs[run.method] if run.kind == "train" else reference).copy_and_resolve_references()
        cfg.seed = run.seed
        run_configs[run.name] = with_seed_in_strings(cfg, run.seed)
    todo = [r for r in runs if not finished(out, r, config_fingerprint(run_configs[r.name]))]
    log(f"sweep: {len(runs) - len(todo)} of {len(runs)} runs already finished, {len(todo)} to do")
    data, started, done = None, time.perf_counter(), []
    for i, run in enumerate(todo):
        eta = ""
        if done:
            from usjepa_jax.run_log import format_eta
            eta = f", ETA {format_eta((time.perf_counter() - started) / len(done) * (len(todo) - i))}"
        log(f"sweep: run {i + 1} of the {len(todo)} to do ({len(runs) - len(todo) + i + 1} of {len(runs)}): "
            f"{run.name}{eta}")
        if data is None:
            if render is None:
                from usjepa_jax.evaluation.runner import render_tasks
                data = render_tasks(reference, log)
            else:
                data = render()
        cfg = run_configs[run.name]
        fingerprint = config_fingerprint(cfg)  # of the config as given: the pre-rendered copy names a local path
        if prerender and run.kind == "train":
            cfg = prerendered(cfg, out, log)
        t = time.perf_counter()
        rows = measure(run, cfg, out / RUNS_DIR / run.name, data)
        write_json_atomic(results_path(out, run), {
            "run": dataclasses.asdict(run), "rows": rows, "config_fingerprint": fingerprint,
            "seconds": time.perf_counter() - t, "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
        done.append(run)
        log(f"sweep: {run.name} finished in {time.perf_counter() - t:.0f}s")
        if after_each:
            after_each()
    return done


# ------------------------------------------------------------------------------------------------ the table
def collect(out: str | Path) -> tuple[dict[str, dict[str, list[float]]], dict[str, int]]:
    """Every finished run's rows: ``({row: {metric: [value per seed]}}, {row: seeds found})``."""
    values: dict[str, dict[str, list[float]]] = {}
    for path in sorted((Path(out) / RUNS_DIR).glob(f"*/{RESULTS_FILE}")):
        for row, metrics in json.loads(path.read_text())["rows"].items():
            for key, v in metrics.items():
                values.setdefault(row, {}).setdefault(key, []).append(float(v))
    seeds = {row: max(len(v) for v in metrics.values()) for row, metrics in values.items()}
    return values, seeds


def aggregate(values: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{row: {metric: {mean, std, n}}}`` over pretraining seeds; std is the sample std (ddof 1; 0 for n=1)."""
    return {row: {key: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                        "n": len(v)} for key, v in metrics.items()} for row, metrics in values.items()}


def ordered_rows(rows: Iterable[str]) -> list[str]:
    """Methods (and their teachers) first, in name order, then the baselines, the oracle last."""
    rows = list(rows)
    return sorted(r for r in rows if r not in ROW_ORDER_LAST) + [r for r in ROW_ORDER_LAST if r in rows]


def shown_metrics(table: dict, patterns: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """(tasks, per-task metrics ``evaluator/metric`` matching ``patterns``, task-free metrics) found in the table.
    A task's metric key is ``task/evaluator/metric``; deeper keys (robustness per severity) and the task-free
    ones (``speckle_invariance/metric``) are recognised by their parts."""
    tasks, per_task, free = {}, {}, {}
    for metrics in table.values():
        for key in metrics:
            parts = key.split("/")
            if len(parts) == 2 and not any(w in parts[1] for w in ("_std", "chance", "seconds")):
                free[key] = None  # (a chance level or a timing is in table.json, not a result to compare)
            elif len(parts) >= 3:
                tasks[parts[0]] = None
                metric = "/".join(parts[1:])
                if any(fnmatch.fnmatchcase(metric, p) for p in patterns) and "seconds" not in metric:
                    per_task[metric] = None
    return list(tasks), list(per_task), list(free)


def _cell(stat: dict | None, expected: int) -> tuple[float | None, str]:
    if stat is None:
        return None, "-"
    text = f"{stat['mean']:.3f}" + (f" ± {stat['std']:.3f}" if stat["n"] > 1 else "")
    return stat["mean"], f"{text} (n={stat['n']}/{expected})" if expected > 1 else text


def markdown(table: dict, seeds: dict[str, int], expected: dict[str, int], patterns: Sequence[str],
             notes: Sequence[str] = ()) -> str:
    from usjepa_jax.evaluation.table import _table

    rows = ordered_rows(table)
    tasks, per_task, free = shown_metrics(table, patterns)
    lines = ["# Sweep: mean ± std over pretraining seeds", "",
             "Each cell: the mean over pretraining seeds of the run's metric (a probe's own value is already the "
             "mean over its probe seeds) ± the sample std over pretraining seeds, and (n=k/N) how many of the N "
             "seeds have finished. Bold: the best of each column of a task table. Every metric is in table.json.", ""]
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])

    def cell(row: str, key: str) -> tuple[float | None, str]:
        return _cell(table[row].get(key), expected.get(row, seeds.get(row, 1)))

    def having(keys: list[str]) -> list[str]:  # the rows with a value in some column (no oracle in a k-NN table)
        return [r for r in rows if any(k in table[r] for k in keys)]

    for metric in per_task:
        keys = [f"{t}/{metric}" for t in tasks]
        lines += [f"## {metric}", ""]
        lines += _table(having(keys), tasks, lambda r, t, m=metric: cell(r, f"{t}/{m}"))
        lines.append("")
    for evaluator in dict.fromkeys(k.split("/")[0] for k in free):
        keys = [k for k in free if k.startswith(evaluator + "/")]
        lines += [f"## {evaluator} (task-free)", ""]
        # No bold: these metrics have no common direction of "better" (within- and across-anatomy similarity).
        lines += _table(having(keys), [k.split("/", 1)[1] for k in keys],
                        lambda r, m, e=evaluator: (None, cell(r, f"{e}/{m}")[1]))
        lines.append("")
    return "\n".join(lines)


def plot(table: dict, patterns: Sequence[str], path: Path, expected: dict[str, int], title: str = "") -> Path:
    """Bars per task, one per row, error bars the std over pretraining seeds; one panel per shown metric, and one
    for the task-free metrics. A bar of fewer seeds than planned (``expected``) is marked with its n."""
    from usjepa_jax.evaluation.plots import figure, save

    rows = ordered_rows(table)
    tasks, per_task, free = shown_metrics(table, patterns)
    panels = [(m, [f"{t}/{m}" for t in tasks], tasks) for m in per_task]
    if free:
        panels.append(("task-free", free, [k.split("/", 1)[1] for k in free]))
    bars = len(rows) * max((len(keys) for _, keys, _ in panels), default=1)
    fig = figure(max(6.0, 0.3 * bars + 3), 4.2 * max(len(panels), 1))
    width = 0.8 / max(len(rows), 1)
    for k, (name, keys, ticks) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, k + 1)
        x = np.arange(len(keys))
        for j, row in enumerate(rows):
            stats = [table[row].get(key) for key in keys]
            xs = x + (j - (len(rows) - 1) / 2) * width
            ax.bar(xs, [s["mean"] if s else np.nan for s in stats], width,
                   yerr=[s["std"] if s else 0.0 for s in stats], capsize=2, label=row)
            for xi, s in zip(xs, stats):
                if s and s["n"] < expected.get(row, 1):
                    ax.text(xi, s["mean"], f"n={s['n']}", ha="center", va="bottom", fontsize=6)
        ax.set_xticks(x, ticks, fontsize=8, rotation=15 if name == "task-free" else 0)
        ax.set_title(f"{title + ': ' if title else ''}{name} (mean ± std over pretraining seeds)", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=6, ncols=min(len(rows), 4))
    return save(fig, path)


def assemble(out: str | Path, expected: dict[str, int] | None = None, patterns: Sequence[str] = DEFAULT_METRICS,
             notes: Sequence[str] = (), title: str = "") -> dict:
    """Write ``OUT/table.md``, ``.json`` and ``.png`` from every results file under ``OUT/runs``; returns the
    JSON. ``expected``: seeds planned per row (for the n=k/N of each cell; default: the seeds found)."""
    out = Path(out)
    values, seeds = collect(out)
    table = aggregate(values)
    expected = {**seeds, **(expected or {})}
    summary = {"rows": ordered_rows(table), "seeds": seeds, "expected_seeds": expected, "notes": list(notes),
               "table": table}
    write_json_atomic(out / TABLE_JSON, summary)
    (out / TABLE_MD).write_text(markdown(table, seeds, expected, patterns, notes))
    if table:
        plot(table, patterns, out / TABLE_PNG, expected, title)
    return summary


def expected_seeds(runs: Sequence[Run], configs: dict) -> dict[str, int]:
    """Seeds planned per table row (a US-JEPA method also has its stage-1 teacher's row, I-JEPA its EMA's)."""
    out: dict[str, int] = {}
    for run in runs:
        names = trained_rows(run.method, configs[run.method]) if run.kind == "train" else [run.method]
        for name in names:
            out[name] = out.get(name, 0) + 1
    return out


# ------------------------------------------------------------------------------------------------ CLI
def define_flags(methods_flag: bool = True) -> dict:
    """The sweep's flags (shared with experiments built on it, e.g. speckle_claim.py). ``usjepa_jax.evaluate`` is
    imported first: it defines flags of its own (--out among them), which these replace (allow_override)."""
    from usjepa_jax import evaluate  # noqa: F401  (see the docstring)

    held = dict(
        out=flags.DEFINE_string("out", None, "Output folder of the sweep (shared by its shards).",
                                allow_override=True),
        seeds=flags.DEFINE_integer("seeds", 3, "Pretraining seeds per method (config.seed = 0 .. seeds-1)."),
        shard=flags.DEFINE_string("shard", "0/1", "i/n: run only the i-th of n slices of the run list."),
        prerender=flags.DEFINE_bool("prerender", True, "Render the simulated pretraining data once into OUT/data "
                                    "and train every run from it."),
        assemble_only=flags.DEFINE_bool("assemble_only", False, "Only write the table from the finished runs."),
        metrics=flags.DEFINE_list("metrics", list(DEFAULT_METRICS), "Metrics of the markdown table and plot "
                                  "(fnmatch patterns over a task's evaluator/metric; table.json has every one)."),
    )
    if methods_flag:
        held["method"] = flags.DEFINE_multi_string(
            "method", [], "NAME=CONFIG[:ARG] [--config.KEY=VALUE ...], repeatable: one table row per method.")
        held["baselines"] = flags.DEFINE_list("baselines", ["random", "raw_pixels"], f"Baselines, of {BASELINES}.")
    return held


def load_config(spec: str, overrides: Sequence[str]):
    """``configs/x.py[:arg]`` plus ``--config.KEY=VALUE`` overrides, parsed as ``usjepa_jax.main`` parses them (a
    typo fails naming the key). ml_collections reads the overrides from ``sys_argv``, so it is given our words."""
    import ml_collections
    from ml_collections import config_flags

    argv = ["sweep", f"--config={spec}", *overrides]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=fv, lock_config=True, sys_argv=argv)
    try:
        fv(argv)
    except (flags.Error, AttributeError, KeyError, ValueError) as err:  # a bad value, an unknown key
        raise app.UsageError(f"--method config {' '.join(argv[1:])}: {err}") from None
    config = fv.config
    if not isinstance(config, ml_collections.ConfigDict):  # ml_collections defers a file's load error to its use
        raise app.UsageError(f"--method config {spec}: {config.__dict__.get('_error', 'cannot be loaded')}")
    return config


def parse_methods(specs: Sequence[str]) -> dict:
    """``--method`` values -> ``{name: config}``."""
    configs = {}
    for spec in specs:
        name, eq, rest = spec.partition("=")
        words = rest.split()
        if not eq or not name or not words or name in configs:
            raise app.UsageError(f"--method={spec!r}: expected NAME=CONFIG [--config.KEY=VALUE ...], names distinct")
        configs[name] = load_config(words[0], words[1:])
    if not configs:
        raise app.UsageError("give at least one --method")
    return configs


def assemble_planned(out: Path, patterns: Sequence[str], notes: Sequence[str] = (), title: str = "") -> dict:
    """``assemble`` with the seeds the sweep planned (``OUT/plan.json``, written before the first run)."""
    plan = json.loads((out / PLAN_FILE).read_text()) if (out / PLAN_FILE).exists() else {}
    return assemble(out, plan.get("expected_seeds"), patterns, notes, title)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    out = Path(_FLAGS["out"].value)
    patterns = _FLAGS["metrics"].value
    if not _FLAGS["assemble_only"].value:
        configs = parse_methods(_FLAGS["method"].value)
        runs = run_list(list(configs), _FLAGS["seeds"].value, _FLAGS["baselines"].value)
        mine = shard(runs, *parse_shard(_FLAGS["shard"].value))
        logging.info("shard %s: %d of the sweep's %d runs: %s", _FLAGS["shard"].value, len(mine), len(runs),
                     ", ".join(r.name for r in mine))
        write_json_atomic(out / PLAN_FILE, {"expected_seeds": expected_seeds(runs, configs)})
        run_sweep(mine, configs, out, prerender=_FLAGS["prerender"].value,
                  after_each=lambda: assemble_planned(out, patterns))
    assemble_planned(out, patterns)
    print((out / TABLE_MD).read_text())
    logging.info("Table: %s (+ .json, .png)", out / TABLE_MD)


if __name__ == "__main__":
    _FLAGS = define_flags()
    flags.mark_flags_as_required(["out"])
    app.run(main)
