"""Does latent prediction against a frozen teacher buy speckle invariance? MAE vs I-JEPA vs US-JEPA at equal FLOPs.

    python experiments/speckle_claim.py --out=/tmp/speckle_claim            # full (~1 h on 2 CPU cores)
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
is evaluated with ``config.evals``: linear probe (5 seeds), speckle invariance, robustness, k-NN, collapse.

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

_OUT = flags.DEFINE_string("out", None, "Output directory (runs are resumed / reused when already there).")
_SMOKE = flags.DEFINE_bool("smoke", False, "Smoke configs and tiny evaluation: checks the driver in minutes.")
_BUDGET_SCALE = flags.DEFINE_float("budget_scale", 1.0, "Scale of US-JEPA's step counts (and so of the budget).")
_REPLOT = flags.DEFINE_bool("replot", False, "Only redraw results.md and the plot from OUT/results.json.")
_EVALUATORS = flags.DEFINE_string("evaluators", "collapse,knn,linear_probe,robustness,speckle_invariance",
                                  "config.evals.evaluators for every encoder.")

METHODS = ("pixel", "ijepa", "usjepa")
LABELS = {"pixel": "MAE (pixel)", "ijepa": "I-JEPA (EMA)", "usjepa": "US-JEPA (frozen teacher)",
          "usjepa_teacher": "US-JEPA stage-1 teacher", "random": "random init (floor)"}


def method_config(method: str, smoke: bool):
    from configs import base, ijepa_ema, mae

    module = {"pixel": mae, "ijepa": ijepa_ema, "usjepa": base}[method]
    cfg = module.get_config("smoke" if smoke else None)
    cfg.mesh.data = 1  # one device: FLOPs per step and wall time are those of one CPU process
    return cfg


def step_flops(config, teacher=None) -> float:
    """FLOPs of one compiled train step (global batch) by XLA's cost analysis."""
    import jax

    from usjepa_jax import train

    trainer = train.build_trainer(config, teacher)
    batch = train.example_batch(config, trainer.sampler, config.optim.batch_size)
    compiled = trainer.step.lower(trainer.abstract_state, trainer.teacher_params, batch).compile()
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


def write_table(rows: dict, plan: dict, out: Path) -> Path:
    corr = ("blur", "contrast", "speckle")
    head = ("| encoder | train steps | train FLOPs | probe macro-F1 | balanced acc | k-NN acc | "
            "speckle inv. ratio | anatomy var. frac. (pooled) | (per patch) | NN retrieval | " + " | ".join(f"{c} s3 macro-F1" for c in corr) + " | RankMe |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, m in rows.items():
        method = name if name in METHODS else None
        flops = f"{plan['spent'][method]:.3g}" if method else "-"
        steps = str(plan["steps"][method]) if method else "-"
        lines.append(f"| {LABELS[name]} | {steps} | {flops} | {_pm(m, 'linear_probe/macro_f1')} | "
                     f"{_pm(m, 'linear_probe/balanced_accuracy')} | {_num(m, 'knn/accuracy')} | "
                     f"{_num(m, 'speckle_invariance/ratio')} | {_num(m, 'speckle_invariance/anatomy_variance_fraction')} | "
                     f"{_num(m, 'speckle_invariance/patch_anatomy_variance_fraction')} | "
                     f"{_num(m, 'speckle_invariance/retrieval', '{:.2f}')} | "
                     + " | ".join(_pm(m, f"robustness/{c}/s3/macro_f1") for c in corr)
                     + f" | {_num(m, 'collapse/rankme', '{:.1f}')} |")
    text = ("# Speckle claim: equal-FLOPs pretraining on the simulator\n\n"
            "FLOPs per step (XLA cost analysis): " + ", ".join(f"{k} {v:.3g}" for k, v in
                                                                 plan["flops_per_step"].items())
            + f"; budget {plan['budget']:.3g} FLOPs per method (US-JEPA's stage 1 counted against it).\n"
            "Probe metrics: mean ± std over probe seeds. s3 = severity 3. Speckle invariance ratio: mean cosine "
            "similarity within an anatomy (different speckle) / across anatomies (1 = no invariance); anatomy var. "
            "frac.: share of embedding variance between anatomy means, M anatomies x K speckle seeds scanned with one "
            "acquisition (1 = speckle-invariant, (M-1)/(MK-1) = anatomy irrelevant), of mean-pooled embeddings and "
            "per patch token inside the scan.\n\n"
            + "\n".join(lines) + "\n")
    path = out / "results.md"
    path.write_text(text)
    return path


def write_plot(rows: dict, out: Path) -> Path:
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from usjepa_jax.data.synthetic import CLASS_NAMES

    fig = Figure(figsize=(11, 3.8))
    FigureCanvasAgg(fig)
    names = list(rows)
    ax = fig.add_subplot(1, 2, 1)
    sev = (0, 1, 2, 3)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        means = [rows[name].get(f"robustness/speckle/s{s}/macro_f1_mean", np.nan) for s in sev]
        stds = [rows[name].get(f"robustness/speckle/s{s}/macro_f1_std", 0.0) for s in sev]
        ax.bar(np.arange(len(sev)) + (i - (len(names) - 1) / 2) * width, means, width, yerr=stds, capsize=2,
               label=LABELS[name])
    ax.axhline(1 / len(CLASS_NAMES), color="k", lw=0.8, ls="--", label="chance")
    ax.set_xticks(np.arange(len(sev)), [f"speckle s{s}" for s in sev])
    ax.set_ylabel("linear-probe macro-F1")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    ax = fig.add_subplot(1, 2, 2)
    for j, (key, label) in enumerate((("anatomy_variance_fraction", "pooled embedding"),
                                      ("patch_anatomy_variance_fraction", "per patch token"))):
        ax.bar(np.arange(len(names)) + (j - 0.5) * 0.4, [rows[n].get(f"speckle_invariance/{key}", np.nan)
                                                         for n in names], 0.4, label=label)
    chance = next((r["speckle_invariance/anatomy_variance_fraction_chance"] for r in rows.values()
                   if "speckle_invariance/anatomy_variance_fraction_chance" in r), None)
    if chance is not None:
        ax.axhline(chance, color="k", lw=0.8, ls="--", label="anatomy irrelevant")
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
    from usjepa_jax import evaluate, train
    from usjepa_jax.evaluation.runner import render_tasks

    out = Path(_OUT.value)
    if _REPLOT.value:
        summary = json.loads((out / "results.json").read_text())
        print(write_table(summary["results"], summary, out).read_text())
        logging.info("Redrawn: %s", write_plot(summary["results"], out))
        return
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    plan = equal_flops_plan(_SMOKE.value, _BUDGET_SCALE.value)
    logging.info("FLOPs/step %s; budget %.3g; steps %s", plan["flops_per_step"], plan["budget"], plan["steps"])
    cfgs = plan["configs"]
    for m in METHODS:
        t = time.perf_counter()
        train.train_and_evaluate(cfgs[m], out / m)
        logging.info("%s trained in %.0fs", m, time.perf_counter() - t)

    for cfg in cfgs.values():
        cfg.evals.evaluators = _EVALUATORS.value
    data = render_tasks(cfgs["usjepa"], logging.info)  # the same images for every encoder
    rows = {}
    for m in METHODS:
        rows[m] = evaluate.evaluate_run(cfgs[m], out / m, "student", "latest", data=data)
    rows["usjepa_teacher"] = evaluate.evaluate_run(cfgs["usjepa"], out / "usjepa", "teacher", data=data)
    rows["random"] = evaluate.evaluate_run(cfgs["usjepa"], out / "usjepa", "random", data=data)

    summary = {"flops_per_step": plan["flops_per_step"], "budget": plan["budget"], "spent": plan["spent"],
                   "steps": {k: str(v) for k, v in plan["steps"].items()}, "smoke": _SMOKE.value, "results": rows,
                   "seconds": time.perf_counter() - t0}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    table, plot = write_table(rows, plan, out), write_plot(rows, out)
    print(table.read_text())
    logging.info("Done in %.0fs: %s, %s", time.perf_counter() - t0, table, plot)


if __name__ == "__main__":
    flags.mark_flags_as_required(["out"])
    app.run(main)
