"""Does latent prediction against a frozen teacher buy speckle invariance? MAE vs I-JEPA vs US-JEPA at equal FLOPs.

    python experiments/speckle_claim.py --out=/tmp/speckle_claim            # full (~1.5 h on 2 CPU cores)
    python experiments/speckle_claim.py --out=/tmp/speckle_claim_smoke --smoke   # the driver end to end, minutes
    python experiments/speckle_claim.py --out=/tmp/speckle_claim --replot       # redraw table + plot from results.json

Three pretrainings on the same simulated data (configs/base.py: data, encoder, masks, schedule shape):
- ``pixel`` (MAE-style masked pixel reconstruction, configs/mae.py),
- ``ijepa`` (EMA teacher, configs/ijepa_ema.py),
- ``usjepa`` (SALT: stage-1 pixel teacher, then the student against it frozen, configs/base.py).

Equal total training compute: FLOPs per step come from XLA's cost analysis of each compiled train step
(``compiled.cost_analysis()['flops']``; forward + backward + optimizer, teacher forward included for US-JEPA,
EMA forward for I-JEPA). US-JEPA's budget = stage-1 steps x stage-1 FLOPs/step + stage-2 steps x FLOPs/step at
the base config's step counts (x ``--budget_scale``); MAE and I-JEPA get ``budget / their FLOPs per step`` steps
(warm-up 10%). Then every encoder (the three students, US-JEPA's stage-1 teacher, and a random init as the floor)
is evaluated with ``config.evals`` on every task of the simulated suite (evaluation/tasks.py): linear probe
(5 seeds), robustness, k-NN, collapse per task, speckle invariance once; the raw pixels get the probe and the
invariance too.

Writes ``OUT/<method>/`` (runs, each with ``eval/results.json``), ``OUT/results.json``, ``OUT/results.md`` (table,
mean +- std over probe seeds) and ``OUT/speckle_claim.png``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from absl import app, flags, logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere in the repo

# usjepa_jax.evaluate (evaluate_run, below) defines CLI flags of its own, among them --out and --tasks. Imported
# first, so that this script's --out and --tasks replace them (allow_override): the values parsed are this
# script's; evaluate's flags are only read by its own main().
from usjepa_jax import evaluate  # noqa: E402

_OUT = flags.DEFINE_string("out", None, "Output directory (runs are resumed / reused when already there).",
                           allow_override=True)
_SMOKE = flags.DEFINE_bool("smoke", False, "Smoke configs and tiny evaluation: checks the driver in minutes.")
_BUDGET_SCALE = flags.DEFINE_float("budget_scale", 1.0, "Scale of US-JEPA's step counts (and so of the budget).")
_REPLOT = flags.DEFINE_bool("replot", False, "Only redraw results.md and the plot from OUT/results.json.")
_EVALUATORS = flags.DEFINE_string("evaluators", "collapse,knn,linear_probe,robustness,speckle_invariance",
                                  "config.evals.evaluators for every encoder.")
_EVAL_SIZES = flags.DEFINE_list("eval_sizes", None, "train,val,test images per task (default: the config's).")
_TASKS = flags.DEFINE_string("tasks", None, "config.evals.tasks (default: the config's, every simulated task).",
                             allow_override=True)

METHODS = ("pixel", "ijepa", "usjepa")
LABELS = {"pixel": "MAE (pixel)", "ijepa": "I-JEPA (EMA)", "usjepa": "US-JEPA (frozen teacher)",
          "usjepa_teacher": "US-JEPA stage-1 teacher", "random": "random init (floor)", "raw_pixels": "raw pixels",
          "oracle": "oracle (phantom, not an encoder)"}


def method_config(method: str, smoke: bool):
    from configs import base, ijepa_ema, mae

    module = {"pixel": mae, "ijepa": ijepa_ema, "usjepa": base}[method]
    cfg = module.get_config("smoke" if smoke else None)
    cfg.mesh.data = 1  # one device: FLOPs per step and wall time are those of one CPU process
    return cfg


def step_flops(config, teacher=None) -> float:
    """FLOPs of one compiled train step (global batch) by XLA's cost analysis."""
    import jax

    from usjepa_jax import targets, train

    trainer = train.build_trainer(config, teacher and targets.FrozenTeacher(teacher, config.loss))
    batch = train.example_batch(config, trainer.sampler, config.optim.batch_size)
    compiled = trainer.step.lower(trainer.abstract_state, trainer.frozen_params, batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0))
    if flops <= 0:
        raise RuntimeError(f"XLA cost analysis gave no FLOPs for method {config.method} on {jax.devices()[0]}.")
    return flops


def equal_flops_plan(smoke: bool, scale: float) -> dict:
    """Configs with step counts such that every method spends US-JEPA's total training FLOPs."""
    from usjepa_jax import config as config_lib
    from usjepa_jax.evaluation.features import random_encoder

    cfgs = {m: method_config(m, smoke) for m in METHODS}
    us = cfgs["usjepa"]
    for o in (us.optim, us.teacher.optim):
        o.total_steps = max(2, round(o.total_steps * scale))
        o.warmup_steps = max(1, o.total_steps // 10)
    stage1 = config_lib.stage1_config(us)
    fake_teacher = random_encoder(us.teacher.model, us.data.image_size, mean=us.data.mean, std=us.data.std)
    flops = {"usjepa_stage1": step_flops(stage1), "usjepa": step_flops(us, fake_teacher),
             "pixel": step_flops(cfgs["pixel"]), "ijepa": step_flops(cfgs["ijepa"])}
    budget = us.teacher.optim.total_steps * flops["usjepa_stage1"] + us.optim.total_steps * flops["usjepa"]
    for m in ("pixel", "ijepa"):
        o = cfgs[m].optim
        o.total_steps = max(2, round(budget / flops[m]))
        o.warmup_steps = max(1, o.total_steps // 10)
    spent = {"pixel": cfgs["pixel"].optim.total_steps * flops["pixel"],
             "ijepa": cfgs["ijepa"].optim.total_steps * flops["ijepa"], "usjepa": budget}
    steps = {"pixel": cfgs["pixel"].optim.total_steps, "ijepa": cfgs["ijepa"].optim.total_steps,
             "usjepa": f"{us.teacher.optim.total_steps} + {us.optim.total_steps}"}
    return {"configs": cfgs, "flops_per_step": flops, "budget": budget, "spent": spent, "steps": steps}


def _pm(metrics: dict, key: str) -> str:
    mean, std = metrics.get(f"{key}_mean"), metrics.get(f"{key}_std")
    return "-" if mean is None else f"{mean:.3f} ± {std:.3f}"


def _num(metrics: dict, key: str, fmt: str = "{:.3f}") -> str:
    return "-" if key not in metrics else fmt.format(metrics[key])


def raw_pixel_row(data: dict, config) -> dict:
    """The raw-pixel baseline: the probe on flattened images per task, and the speckle invariance of the pixels
    themselves (pooled = the whole image, per patch = the patch's pixels)."""
    import numpy as np

    from usjepa_jax.evaluation import metrics
    from usjepa_jax.evaluation.data import render_invariance_set
    from usjepa_jax.evaluation.probe import ProbeConfig
    from usjepa_jax.evaluation.tasks import probe_on, raw_pixel_features
    from usjepa_jax.masks import patch_valid_from_scan_mask
    from usjepa_jax.models.vit import parse_variant

    row = {}
    for task, d in data.items():
        m = probe_on(d, raw_pixel_features, ProbeConfig.from_config(config.evals.probe), config.evals.seed)
        row.update({f"{task}/linear_probe/{k}": v for k, v in m.items()})
    inv = config.evals.invariance
    s = render_invariance_set(config.data, inv.num_anatomies, inv.num_speckles, config.evals.seed)
    m, k, size = s["image"].shape[:3]
    p = parse_variant(config.model.variant)["patch_size"]  # the encoders' patch grid
    g = size // p
    x = s["image"][..., 0].astype(np.float32) / 255
    patches = x.reshape(m, k, g, p, g, p).transpose(0, 1, 2, 4, 3, 5).reshape(m, k, g * g, p * p)
    inside = patch_valid_from_scan_mask(s["scan_mask"], (g, g), whole=True)
    row.update({f"speckle_invariance/{key}": v for key, v in
                metrics.speckle_invariance(x.reshape(m, k, -1), patches[:, :, inside]).items()})
    return row


def oracle_row(data: dict, config) -> dict:
    """The oracle (tasks.oracle_features: the phantom's tissue fractions, the label-defining parameters): the
    probe's ceiling on each task."""
    from usjepa_jax.evaluation.probe import ProbeConfig
    from usjepa_jax.evaluation.tasks import oracle_features, probe_on

    row = {}
    for task, d in data.items():
        m = probe_on(d, oracle_features, ProbeConfig.from_config(config.evals.probe), config.evals.seed)
        row.update({f"{task}/linear_probe/{k}": v for k, v in m.items()})
    return row


def write_table(rows: dict, plan: dict, tasks: list[str], out: Path) -> Path:
    corr = ("blur", "contrast", "speckle")
    head = ("| encoder | train steps | train FLOPs | " + " | ".join(f"`{t}` probe macro-F1" for t in tasks)
            + " | anatomy var. frac. (pooled) | (per patch) | speckle inv. ratio | NN retrieval | RankMe (`"
            + tasks[0] + "`) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    rob_head = "| encoder | " + " | ".join(f"`{t}` {c} s3" for t in tasks for c in corr) + " |"
    rob = [rob_head, "|" + "---|" * (rob_head.count("|") - 1)]
    for name, m in rows.items():
        method = name if name in METHODS else None
        flops = f"{plan['spent'][method]:.3g}" if method else "-"
        steps = str(plan["steps"][method]) if method else "-"
        lines.append(f"| {LABELS[name]} | {steps} | {flops} | "
                     + " | ".join(_pm(m, f"{t}/linear_probe/macro_f1") for t in tasks) + " | "
                     f"{_num(m, 'speckle_invariance/anatomy_variance_fraction')} | "
                     f"{_num(m, 'speckle_invariance/patch_anatomy_variance_fraction')} | "
                     f"{_num(m, 'speckle_invariance/ratio')} | "
                     f"{_num(m, 'speckle_invariance/retrieval', '{:.2f}')} | "
                     f"{_num(m, f'{tasks[0]}/collapse/rankme', '{:.1f}')} |")
        if name not in ("raw_pixels", "oracle"):
            rob.append(f"| {LABELS[name]} | " + " | ".join(_pm(m, f"{t}/robustness/{c}/s3/macro_f1")
                                                         for t in tasks for c in corr) + " |")
    text = ("# Speckle claim: equal-FLOPs pretraining on the simulator\n\n"
            "FLOPs per step (XLA cost analysis): " + ", ".join(f"{k} {v:.3g}" for k, v in
                                                                 plan["flops_per_step"].items())
            + f"; budget {plan['budget']:.3g} FLOPs per method (US-JEPA's stage 1 counted against it).\n"
            "Probe metrics: macro-F1 on each task's test split, mean ± std over probe seeds. Anatomy var. frac.: "
            "share of embedding variance between anatomy means, M anatomies x K speckle seeds scanned with one "
            "acquisition (1 = speckle-invariant, (M-1)/(MK-1) = anatomy irrelevant), of mean-pooled embeddings and "
            "per patch token inside the scan (raw pixels: the image and the patch's pixels); speckle inv. ratio: "
            "mean cosine similarity within an anatomy / across anatomies (1 = no invariance).\n\n"
            + "\n".join(lines) + "\n\nRobustness: the clean probe tested under corruption, severity 3 (macro-F1, "
            "mean ± std over probe seeds).\n\n" + "\n".join(rob) + "\n")
    path = out / "results.md"
    path.write_text(text)
    return path


def write_plot(rows: dict, tasks: list[str], chance: dict, out: Path) -> Path:
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.2))
    FigureCanvasAgg(fig)
    names = list(rows)
    width = 0.8 / len(names)
    ax = fig.add_subplot(1, 3, 1)
    for i, name in enumerate(names):
        ax.bar(np.arange(len(tasks)) + (i - (len(names) - 1) / 2) * width,
               [rows[name].get(f"{t}/linear_probe/macro_f1_mean", np.nan) for t in tasks], width,
               yerr=[rows[name].get(f"{t}/linear_probe/macro_f1_std", 0.0) for t in tasks], capsize=2,
               label=LABELS[name])
    for j, t in enumerate(tasks):
        ax.hlines(chance[t], j - 0.45, j + 0.45, color="k", lw=0.8, ls="--", label="chance" if j == 0 else None)
    ax.set_xticks(np.arange(len(tasks)), tasks)
    ax.set_ylabel("linear-probe macro-F1 (test)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title("tasks (mean ± std over probe seeds)", fontsize=9)
    ax = fig.add_subplot(1, 3, 2)
    sev = (0, 1, 2, 3)
    encoders = [n for n in names if n not in ("raw_pixels", "oracle")]
    w = 0.8 / len(encoders)
    for i, name in enumerate(encoders):
        ax.bar(np.arange(len(sev)) + (i - (len(encoders) - 1) / 2) * w,
               [rows[name].get(f"{tasks[0]}/robustness/speckle/s{s}/macro_f1_mean", np.nan) for s in sev], w,
               yerr=[rows[name].get(f"{tasks[0]}/robustness/speckle/s{s}/macro_f1_std", 0.0) for s in sev],
               capsize=2, label=LABELS[name])
    ax.axhline(chance[tasks[0]], color="k", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(sev)), [f"speckle s{s}" for s in sev])
    ax.set_ylim(0, 1)
    ax.set_title(f"`{tasks[0]}` probe under added speckle", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax = fig.add_subplot(1, 3, 3)
    names = [n for n in names if n != "oracle"]  # the oracle has no embedding
    for j, (key, label) in enumerate((("anatomy_variance_fraction", "pooled embedding"),
                                      ("patch_anatomy_variance_fraction", "per patch token"))):
        ax.bar(np.arange(len(names)) + (j - 0.5) * 0.4, [rows[n].get(f"speckle_invariance/{key}", np.nan)
                                                         for n in names], 0.4, label=label)
    floor = next((r["speckle_invariance/anatomy_variance_fraction_chance"] for r in rows.values()
                  if "speckle_invariance/anatomy_variance_fraction_chance" in r), None)
    if floor is not None:
        ax.axhline(floor, color="k", lw=0.8, ls="--", label="anatomy irrelevant")
    ax.legend(fontsize=7)
    ax.set_xticks(np.arange(len(names)), [LABELS[n] for n in names], rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("embedding variance between anatomies")
    ax.set_ylim(0, 1)
    ax.set_title("speckle invariance (higher = more invariant)", fontsize=9)
    fig.tight_layout()
    path = out / "speckle_claim.png"
    fig.savefig(path, dpi=110)
    return path


def main(argv) -> None:
    del argv
    from usjepa_jax import train
    from usjepa_jax.evaluation.runner import render_tasks

    out = Path(_OUT.value)
    if _REPLOT.value:
        summary = json.loads((out / "results.json").read_text())
        print(write_table(summary["results"], summary, summary["tasks"], out).read_text())
        logging.info("Redrawn: %s", write_plot(summary["results"], summary["tasks"], summary["chance"], out))
        return
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    plan = equal_flops_plan(_SMOKE.value, _BUDGET_SCALE.value)
    logging.info("FLOPs/step %s; budget %.3g; steps %s", plan["flops_per_step"], plan["budget"], plan["steps"])
    cfgs = plan["configs"]
    for cfg in cfgs.values():
        cfg.evals.evaluators = _EVALUATORS.value
        cfg.evals.knn.every = 0  # no k-NN monitor during pretraining: the evaluation below measures the encoders
        if _TASKS.value:
            cfg.evals.tasks = _TASKS.value
        if _EVAL_SIZES.value:
            cfg.evals.num_train, cfg.evals.num_val, cfg.evals.num_test = (int(n) for n in _EVAL_SIZES.value)
    us = cfgs["usjepa"]
    data = render_tasks(us, logging.info)  # the same images for every encoder
    tasks = list(data)
    chance = {t: 1.0 / d.num_classes for t, d in data.items()}
    rows, seconds = {}, {}

    def write(final: bool) -> None:
        """Table, plot and results.json after every encoder: a run cut short still shows what it measured."""
        summary = {"flops_per_step": plan["flops_per_step"], "budget": plan["budget"], "spent": plan["spent"],
                   "steps": {k: str(v) for k, v in plan["steps"].items()}, "smoke": _SMOKE.value,
                   "budget_scale": _BUDGET_SCALE.value, "tasks": tasks, "chance": chance, "results": rows,
                   "eval_sizes": [us.evals.num_train, us.evals.num_val, us.evals.num_test],
                   "train_seconds": seconds, "seconds": time.perf_counter() - t0, "complete": final}
        (out / "results.json").write_text(json.dumps(summary, indent=2))
        write_table(rows, plan, tasks, out), write_plot(rows, tasks, chance, out)

    rows["oracle"] = oracle_row(data, us)
    rows["raw_pixels"] = raw_pixel_row(data, us)
    rows["random"] = evaluate.evaluate_run(us, out / "usjepa", "random", data=data)
    write(False)
    for m in ("usjepa", "pixel", "ijepa"):  # US-JEPA first: it is configs/base.py at --budget_scale=1
        t = time.perf_counter()
        train.train_and_evaluate(cfgs[m], out / m)
        seconds[m] = time.perf_counter() - t
        logging.info("%s trained in %.0fs", m, seconds[m])
        rows[m] = evaluate.evaluate_run(cfgs[m], out / m, "student", "latest", data=data)
        if m == "usjepa":
            rows["usjepa_teacher"] = evaluate.evaluate_run(us, out / "usjepa", "teacher", data=data)
        write(False)
    rows = {name: rows[name] for name in (*METHODS, "usjepa_teacher", "random", "raw_pixels", "oracle")}
    write(True)
    print((out / "results.md").read_text())
    logging.info("Done in %.0fs: %s, %s", time.perf_counter() - t0, out / "results.md", out / "speckle_claim.png")


if __name__ == "__main__":
    flags.mark_flags_as_required(["out"])
    app.run(main)
