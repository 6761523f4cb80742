"""experiments/sweep.py: runs in parts (skip what finished, resume the rest), shards, the table over seeds.

The sweep machinery is tested with a stand-in ``measure`` (no training: a run's metrics are a function of its
name), so these tests take a second; training's own exact resume is tested in test_train.py, and the sweep end
to end on smoke configs is shown in docs/sweeps.md.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from usjepa_jax.config import default_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/ is not part of the package
from experiments import sweep  # noqa: E402

METHODS = ("ijepa", "usjepa")


def configs():
    out = {}
    for m in METHODS:
        c = default_config()
        c.method = m
        c.teacher.checkpoint = "/frozen/teacher"  # no stage-1 teacher row: one row per method
        out[m] = c
    return out


class Interrupted(Exception):
    pass


def fake_measure(calls: list, fail_after: int | None = None):
    """Metrics determined by the run (so a rerun reproduces them); raises after ``fail_after`` runs, as a killed
    process would stop, with nothing written for the run it was in."""

    def measure(run, config, workdir, data):
        if fail_after is not None and len(calls) >= fail_after:
            raise Interrupted(run.name)
        calls.append(run.name)
        assert config.seed == run.seed and data == {"lesion": "tasks"}
        base = {"ijepa": 0.5, "usjepa": 0.6, "random": 0.3, "raw_pixels": 0.4}[run.method]
        value = base + 0.01 * run.seed
        return {run.method: {"lesion/linear_probe/macro_f1_mean": value, "lesion/linear_probe/macro_f1_std": 0.01,
                             "speckle_invariance/ratio": 2 * value}}

    return measure


def sweep_into(out, runs, calls, fail_after=None):
    return sweep.run_sweep(runs, configs(), out, prerender=False, render=lambda: {"lesion": "tasks"},
                           measure=fake_measure(calls, fail_after), log=lambda m: None)


def test_interrupted_sweep_resumes_without_redoing_and_assembles_the_same_table(tmp_path):
    runs = sweep.run_list(METHODS, seeds=2)
    calls = []
    with pytest.raises(Interrupted):
        sweep_into(tmp_path / "cut", runs, calls, fail_after=1)
    assert calls == ["ijepa_seed0"]
    assert sweep.finished(tmp_path / "cut", runs[0]) and not sweep.finished(tmp_path / "cut", runs[1])
    partial = sweep.assemble(tmp_path / "cut", sweep.expected_seeds(runs, configs()))
    assert partial["table"]["ijepa"]["lesion/linear_probe/macro_f1_mean"]["n"] == 1
    assert "(n=1/2)" in (tmp_path / "cut" / sweep.TABLE_MD).read_text()

    calls.clear()
    done = sweep_into(tmp_path / "cut", runs, calls)
    assert "ijepa_seed0" not in calls and calls == [r.name for r in runs[1:]] == [r.name for r in done]
    calls.clear()
    assert sweep_into(tmp_path / "cut", runs, calls) == [] and calls == []  # all finished: nothing to do

    sweep_into(tmp_path / "whole", runs, [])
    tables = [sweep.assemble(tmp_path / d, sweep.expected_seeds(runs, configs())) for d in ("cut", "whole")]
    assert tables[0] == tables[1]
    texts = [(tmp_path / d / sweep.TABLE_MD).read_text() for d in ("cut", "whole")]
    assert texts[0] == texts[1]
    assert "0.505 ± 0.007 (n=2/2)" in texts[0]  # ijepa: seeds 0.50 and 0.51, sample std
    assert (tmp_path / "cut" / sweep.TABLE_PNG).stat().st_size > 0
    assert json.loads((tmp_path / "cut" / sweep.TABLE_JSON).read_text())["rows"] == ["ijepa", "usjepa", "random",
                                                                                  "raw_pixels"]


def test_shards_partition_the_runs_deterministically():
    runs = sweep.run_list(("a", "b", "c"), seeds=3, baselines=sweep.BASELINES)
    for n in (1, 2, 3, 5, len(runs) + 2):
        parts = [sweep.shard(runs, *sweep.parse_shard(f"{i}/{n}")) for i in range(n)]
        names = [r.name for p in parts for r in p]
        assert sorted(names) == sorted(r.name for r in runs) and len(set(names)) == len(runs)  # disjoint, covering
        assert parts == [sweep.shard(sweep.run_list(("a", "b", "c"), 3, sweep.BASELINES), i, n) for i in range(n)]
    for bad in ("2/2", "1", "-1/2", "a/b", "0/0"):
        with pytest.raises(ValueError):
            sweep.parse_shard(bad)


def test_shards_in_one_folder_assemble_the_whole_sweep(tmp_path):
    runs = sweep.run_list(METHODS, seeds=3)
    for i in range(2):
        sweep_into(tmp_path, sweep.shard(runs, i, 2), [])
    table = sweep.assemble(tmp_path, sweep.expected_seeds(runs, configs()))
    assert {row: table["seeds"][row] for row in table["rows"]} == {"ijepa": 3, "usjepa": 3, "random": 3,
                                                                   "raw_pixels": 1}


def test_expected_seeds_count_every_row_a_run_gives():
    """A US-JEPA run with a stage 1 also gives its teacher's row, an I-JEPA run its EMA encoder's; a frozen
    teacher given by checkpoint gives no row; a baseline gives its own."""
    given = configs()
    given["stage1"] = default_config()
    given["stage1"].method, given["stage1"].teacher.checkpoint = "usjepa", ""
    runs = sweep.run_list([*METHODS, "stage1"], seeds=2, baselines=("random", "raw_pixels"))
    assert sweep.expected_seeds(runs, given) == {"ijepa": 2, "ijepa_ema": 2, "usjepa": 2, "stage1": 2,
                                                 "stage1_teacher": 2, "random": 2, "raw_pixels": 1}


def test_a_results_file_of_another_config_is_refused(tmp_path):
    runs = sweep.run_list(("ijepa",), seeds=1, baselines=())
    sweep_into(tmp_path, runs, [])
    changed = configs()
    changed["ijepa"].optim.total_steps += 1
    with pytest.raises(RuntimeError, match="another config"):
        sweep.run_sweep(runs, changed, tmp_path, prerender=False, render=dict, measure=fake_measure([]))


def test_seed_placeholders_take_each_runs_seed(tmp_path):
    runs = sweep.run_list(("usjepa",), seeds=2, baselines=())
    given = {"usjepa": configs()["usjepa"]}
    given["usjepa"].teacher.checkpoint = "/t/runs/ijepa_seed{seed}/encoder_ema"
    seen = {}

    def measure(run, config, workdir, data):
        seen[run.seed] = config.teacher.checkpoint
        return {run.method: {"lesion/linear_probe/macro_f1_mean": 0.5}}

    sweep.run_sweep(runs, given, tmp_path, prerender=False, render=dict, measure=measure)
    assert seen == {0: "/t/runs/ijepa_seed0/encoder_ema", 1: "/t/runs/ijepa_seed1/encoder_ema"}
    assert given["usjepa"].teacher.checkpoint.endswith("seed{seed}/encoder_ema")  # the method's config is untouched


def test_atomic_results_leave_no_partial_file(tmp_path):
    path = tmp_path / "r" / sweep.RESULTS_FILE
    sweep.write_json_atomic(path, {"a": 1})
    sweep.write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2} and [p.name for p in path.parent.iterdir()] == [path.name]


def test_new_tasks_and_metrics_reach_the_table_without_code_changes():
    table = sweep.aggregate({"m": {"framed/attentive_probe/macro_f1_mean": [0.7, 0.9],
                                   "tissue/dense_probe/miou_mean": [0.4],
                                   "framed/robustness/blur/s3/macro_f1_mean": [0.5]}})
    tasks, metrics, free = sweep.shown_metrics(table, sweep.DEFAULT_METRICS)
    assert tasks == ["framed", "tissue"] and metrics == ["attentive_probe/macro_f1_mean", "dense_probe/miou_mean"]
    assert free == []
    text = sweep.markdown(table, {"m": 2}, {"m": 3}, sweep.DEFAULT_METRICS)
    assert "0.800 ± 0.141 (n=2/3)" in text and "0.400 (n=1/3)" in text


def test_pretraining_data_is_rendered_once_and_shared(tmp_path):
    from configs import base

    config = base.get_config("smoke")
    logs = []
    first = sweep.prerendered(config, tmp_path, logs.append)
    config.seed = 1  # another pretraining seed: the same images
    second = sweep.prerendered(config, tmp_path, logs.append)
    assert first.data.source == second.data.source == "prepared" and first.data.paths == second.data.paths
    assert len(logs) == 1 and len(list((tmp_path / sweep.DATA_DIR).iterdir())) == 1  # rendered once, no tmp left
    assert config.data.source == "synthetic"  # the given config is not changed
    config.data.num_train += 8  # other settings: another rendering
    assert sweep.prerendered(config, tmp_path, logs.append).data.paths != first.data.paths


def test_a_method_is_a_config_with_overrides():
    configs = sweep.parse_methods(["base=configs/base.py:smoke",
                                   "lr3=configs/base.py:smoke --config.optim.lr_peak=3e-3"])
    assert configs["lr3"].optim.lr_peak == 3e-3 != configs["base"].optim.lr_peak
    assert configs["lr3"].data.image_size == configs["base"].data.image_size  # the rest as the config says
    for bad in ("x=configs/base.py --config.optim.lr_peek=1", "configs/base.py", "x=configs/nope.py"):
        with pytest.raises(Exception, match="method"):
            sweep.parse_methods([bad])


def test_pretraining_data_keeps_the_configs_mixture_of_framed_views(tmp_path):
    from configs import base
    from usjepa_jax.data import framing, shards
    from usjepa_jax.data.settings import simulator_config

    config = base.get_config("smoke")
    config.data.num_train, config.data.num_val = 6, 2
    config.data.framing.fraction = 0.5
    prepared_config = sweep.prerendered(config, tmp_path, lambda _: None)
    store = shards.PreparedStore(prepared_config.data.paths)
    prepared = shards.PreparedSource("synthetic", store.shard_paths, store.files)
    mixture = framing.FramedMixtureSource(8, 0, simulator_config(config.data), framing.framing_from_config(config.data), 0.5)
    assert {mixture.is_framed(i) for i in range(8)} == {True, False}  # both kinds in these 8 images
    for i in range(8):
        np.testing.assert_array_equal(prepared[i]["image"], mixture[i]["image"])
    config.data.framing.fraction = 0.0  # whole scans only: another rendering
    assert sweep.prerendered(config, tmp_path, lambda _: None).data.paths != prepared_config.data.paths
