"""Does latent prediction against a frozen teacher buy speckle invariance? MAE vs I-JEPA vs US-JEPA at equal FLOPs.

    python experiments/speckle_claim.py --out=/tmp/speckle_claim            # 3 seeds: 14 runs, ~2.5 h on 2 CPU cores
    python experiments/speckle_claim.py --out=/tmp/speckle_claim --shard=0/3    # on machine 0 of 3 (1/3, 2/3 too)
    python experiments/speckle_claim.py --out=/tmp/speckle_claim_smoke --smoke --seeds=2   # the driver, minutes
    python experiments/speckle_claim.py --out=/tmp/speckle_claim --assemble_only   # the table from what finished

Three pretrainings on the same simulated data (configs/base.py: data, encoder, masks, schedule shape):
- ``pixel`` (MAE-style masked pixel reconstruction, configs/mae.py),
- ``ijepa`` (EMA teacher, configs/ijepa_ema.py),
- ``usjepa`` (SALT: stage-1 pixel teacher, then the student against it frozen, configs/base.py).

Equal total training compute: FLOPs per step come from XLA's cost analysis of each compiled train step
(``compiled.cost_analysis()['flops']``; forward + backward + optimizer, teacher forward included for US-JEPA,
EMA forward for I-JEPA). US-JEPA's budget = stage-1 steps x stage-1 FLOPs/step + stage-2 steps x FLOPs/step at
the base config's step counts (x ``--budget_scale``); MAE and I-JEPA get ``budget / their FLOPs per step`` steps
(warm-up 10%). The plan is computed once and kept in ``OUT/flops_plan.json``, so a rerun or another shard trains
the same step counts without compiling the steps again.

The claim is over pretraining seeds (``--seeds``, default 3; docs/sweeps.md): each method x seed is one run of the
sweep (experiments/sweep.py: ``OUT/runs/<method>_seed<k>/``, a results file per finished run, a rerun skips them
and resumes the rest, ``--shard=i/n``), as are the baselines: a random init per seed (the floor), the raw pixels
and the oracle (the phantom's features: each task's ceiling). Every encoder, US-JEPA's stage-1 teacher included,
is evaluated with ``config.evals`` on the same rendered images of every task of the simulated suite
(evaluation/tasks.py): the linear, attentive and dense probes (probe seeds inside each run), robustness, k-NN,
collapse, speckle invariance.

Writes ``OUT/table.md`` (one table per metric: mean ± std over pretraining seeds, n seeds per cell),
``OUT/table.json`` (every metric) and ``OUT/table.png``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags, logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere in the repo

from experiments import sweep  # noqa: E402

# The sweep's flags (--out, --seeds, --shard, --prerender, --assemble_only, --metrics) first: they import
# usjepa_jax.evaluate, whose own --tasks this script's replaces (allow_override).
_SWEEP = sweep.define_flags(methods_flag=False)
flags.adopt_module_key_flags(sweep)  # listed in this script's --help with its own
_SMOKE = flags.DEFINE_bool("smoke", False, "Smoke configs and tiny evaluation: checks the driver in minutes.")
_BUDGET_SCALE = flags.DEFINE_float("budget_scale", 1.0, "Scale of US-JEPA's step counts (and so of the budget).")
_EVALUATORS = flags.DEFINE_string(
    "evaluators", "collapse,knn,linear_probe,attentive_probe,dense_probe,robustness,speckle_invariance",
    "config.evals.evaluators for every encoder.")
_EVAL_SIZES = flags.DEFINE_list("eval_sizes", None, "train,val,test images per task (default: the config's).")
_TASKS = flags.DEFINE_string("tasks", None, "config.evals.tasks (default: the config's, every simulated task).",
                             allow_override=True)

METHODS = ("pixel", "ijepa", "usjepa")
PLAN_FILE = "flops_plan.json"  # the equal-FLOPs step counts (OUT/plan.json is the sweep's own)
LABELS = {"pixel": "MAE (pixel)", "ijepa": "I-JEPA (EMA)", "ijepa_ema": "I-JEPA's EMA (target) encoder",
          "usjepa": "US-JEPA (frozen teacher)", "usjepa_teacher": "US-JEPA stage-1 teacher",
          "random": "random init (floor)", "raw_pixels": "raw pixels", "oracle": "oracle (phantom, not an encoder)"}


def method_config(method: str, smoke: bool):
    from configs import base, ijepa_ema, mae

    module = {"pixel": mae, "ijepa": ijepa_ema, "usjepa": base}[method]
    cfg = module.get_config("smoke" if smoke else None)
    cfg.mesh.data = 1  # one device: FLOPs per step and wall time are those of one CPU process
    return cfg


def step_flops(config, teacher=None) -> float:
    """FLOPs of one train step (global batch) by XLA's cost analysis, every micro-batch counted."""
    import jax

    from usjepa_jax import targets, train

    flops = train.step_flops(config, teacher and targets.FrozenTeacher(teacher, config.loss))
    if flops <= 0:
        raise RuntimeError(f"XLA cost analysis gave no FLOPs for method {config.method} on {jax.devices()[0]}.")
    return flops


def equal_flops_plan(cfgs: dict, scale: float) -> dict:
    """Step counts such that every method spends US-JEPA's total training FLOPs (its steps x ``scale``)."""
    from usjepa_jax import config as config_lib
    from usjepa_jax.evaluation.features import random_encoder

    us = cfgs["usjepa"]
    steps = {"usjepa": [max(2, round(us.teacher.optim.total_steps * scale)),
                        max(2, round(us.optim.total_steps * scale))]}
    set_steps(cfgs, steps)
    stage1 = config_lib.stage1_config(us)
    fake_teacher = random_encoder(us.teacher.model, us.data.image_size, mean=us.data.mean, std=us.data.std)
    flops = {"usjepa_stage1": step_flops(stage1), "usjepa": step_flops(us, fake_teacher),
             "pixel": step_flops(cfgs["pixel"]), "ijepa": step_flops(cfgs["ijepa"])}
    budget = steps["usjepa"][0] * flops["usjepa_stage1"] + steps["usjepa"][1] * flops["usjepa"]
    steps.update({m: max(2, round(budget / flops[m])) for m in ("pixel", "ijepa")})
    spent = {"pixel": steps["pixel"] * flops["pixel"], "ijepa": steps["ijepa"] * flops["ijepa"], "usjepa": budget}
    return {"flops_per_step": flops, "budget": budget, "spent": spent, "steps": steps}


def set_steps(cfgs: dict, steps: dict) -> None:
    """The step counts of ``steps`` into the methods' configs (US-JEPA: [stage 1, stage 2]), warm-up 10% of each."""
    for method, n in steps.items():
        stages = ((cfgs[method].teacher.optim, n[0]), (cfgs[method].optim, n[1])) if method == "usjepa" else (
            (cfgs[method].optim, n),)
        for o, k in stages:
            o.total_steps, o.warmup_steps = k, max(1, k // 10)


def planned_configs(out: Path, smoke: bool, scale: float) -> tuple[dict, dict]:
    """The three methods' configs at equal FLOPs, and the plan: ``OUT/flops_plan.json`` when a run of the same
    settings made it (so every rerun and shard trains the same steps), else measured now and saved there."""
    cfgs = {m: method_config(m, smoke) for m in ("usjepa", "pixel", "ijepa")}  # US-JEPA first: the reference
    path = out / PLAN_FILE
    settings = {"smoke": smoke, "budget_scale": scale}
    plan = json.loads(path.read_text()) if path.exists() else {}
    if plan.get("settings") != settings:
        plan = {"settings": settings, **equal_flops_plan(cfgs, scale)}
        sweep.write_json_atomic(path, plan)
    set_steps(cfgs, plan["steps"])
    logging.info("FLOPs/step %s; budget %.3g; steps %s", plan["flops_per_step"], plan["budget"], plan["steps"])
    return cfgs, plan


def plan_notes(plan: dict) -> list[str]:
    steps = dict(plan["steps"], usjepa=" + ".join(map(str, plan["steps"]["usjepa"])))
    return ["Equal training FLOPs (XLA cost analysis): " + ", ".join(
                f"{LABELS[m]} {steps[m]} steps, {plan['spent'][m]:.3g} FLOPs" for m in METHODS)
            + "; FLOPs per step " + ", ".join(f"{k} {v:.3g}" for k, v in plan["flops_per_step"].items()) + ".",
            "Rows: " + "; ".join(f"`{k}` {v}" for k, v in LABELS.items()) + ".",
            "Anatomy variance fraction: share of embedding variance between anatomy means, M anatomies x K speckle "
            "seeds under one acquisition (1 = speckle-invariant); ratio: mean cosine similarity within an anatomy / "
            "across anatomies (1 = no invariance); raw pixels: of the image and of each patch's pixels."]


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    out = Path(_SWEEP["out"].value)
    out.mkdir(parents=True, exist_ok=True)
    patterns = [*_SWEEP["metrics"].value, "robustness/*/s3/macro_f1_mean"]  # every corruption at its strongest
    plan_path = out / PLAN_FILE
    if _SWEEP["assemble_only"].value:  # the table only: the plan the runs were trained under, nothing measured
        plan = json.loads(plan_path.read_text()) if plan_path.exists() else None
    else:
        cfgs, plan = planned_configs(out, _SMOKE.value, _BUDGET_SCALE.value)

    def assemble() -> dict:
        return sweep.assemble_planned(out, patterns, plan_notes(plan) if plan else [], title="speckle claim")

    if not _SWEEP["assemble_only"].value:
        for cfg in cfgs.values():
            cfg.evals.evaluators = _EVALUATORS.value
            cfg.evals.knn.every = 0  # no k-NN monitor during pretraining: the evaluation measures the encoders
            if _TASKS.value:
                cfg.evals.tasks = _TASKS.value
            if _EVAL_SIZES.value:
                cfg.evals.num_train, cfg.evals.num_val, cfg.evals.num_test = (int(n) for n in _EVAL_SIZES.value)
        runs = sweep.run_list(METHODS, _SWEEP["seeds"].value, baselines=sweep.BASELINES)
        sweep.write_json_atomic(out / sweep.PLAN_FILE, {"expected_seeds": sweep.expected_seeds(runs, cfgs)})
        mine = sweep.shard(runs, *sweep.parse_shard(_SWEEP["shard"].value))
        logging.info("shard %s: %d of %d runs", _SWEEP["shard"].value, len(mine), len(runs))
        sweep.run_sweep(mine, cfgs, out, prerender=_SWEEP["prerender"].value, after_each=assemble)
    assemble()
    print((out / sweep.TABLE_MD).read_text())
    logging.info("Table: %s (+ .json, .png)", out / sweep.TABLE_MD)


if __name__ == "__main__":
    flags.mark_flags_as_required(["out"])
    app.run(main)
