"""Views framed on the finding (data/framing.py): the windows hold the finding, are fixed by the seed, frame "none"
on its would-be site; the pretraining mixture is deterministic and 0 keeps the whole scans as they were."""

import pickle

import numpy as np
import pytest

from configs import base
from usjepa_jax.data import framing, pipeline, settings, synthetic
from usjepa_jax.evaluation import tasks


def _data_config(**framing_values):
    c = base.get_config("smoke")
    c.data.framing.update(framing_values)
    return c.data


def _lesion_pixels(split, i):
    return np.isin(split.segmentation[i], list(synthetic.LESION_SEGMENT.values()))


@pytest.mark.parametrize("task", ["lesion", "margin"])
def test_framed_windows_contain_the_finding_and_are_identical_for_one_seed(task):
    data = _data_config(render_size=128)
    a = tasks.simulated_task_split(task, data, "train", 10, seed=0)
    b = tasks.simulated_task_split(task, data, "train", 10, seed=0)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.segmentation, b.segmentation)
    size = a.image.shape[1]
    for i, label in enumerate(a.label):
        lesion = _lesion_pixels(a, i)
        if task == "lesion" and label == 0:  # "none": framed on the would-be site, no lesion in view
            assert not lesion.any()
            continue
        assert lesion.any(), (task, i, label)
        # The lesion is near the centre: off by at most the position jitter (0.5 of a diameter, the window being
        # 2.5 diameters / 1.2 at the smallest), a quarter of the frame, plus a pixel of rounding.
        rows, cols = np.nonzero(lesion)
        for centre in (rows.mean(), cols.mean()):
            assert abs(centre + 0.5 - size / 2) <= size * 0.5 * 1.2 / 2.5 + 1, (task, i, centre)


def test_none_is_framed_like_a_lesion_of_the_same_anatomy():
    """One anatomy seed: the window does not depend on the class (same place, same scale), so neither its
    position nor the speckle grain's size in the frame tells the class."""
    sim, view = synthetic.SimulatorConfig(image_size=32), framing.Framing(render_size=96)
    windows = [framing.render_framed(7, 1, sim, view, scene={"lesion": c})["params"]["window"]
               for c in range(len(synthetic.CLASS_NAMES))]
    for key in ("side_mm", "site_diameter_mm"):
        assert len({round(w[key], 9) for w in windows}) == 1, (key, windows)
    assert windows[0]["x_mm"] == pytest.approx(windows[2]["x_mm"])  # none sits where the solid lesion would


def test_whole_scan_task_is_kept_as_before():
    data = _data_config(tasks="")
    split = tasks.simulated_task_split("lesion", data, "val", 3, seed=0)
    a, s = tasks.anatomy_seeds("lesion", "val", 3, 0)
    whole = synthetic.render(a[0], s[0], settings.simulator_config(data), scene={"lesion": int(split.label[0])})
    item = pipeline.ToModelInput(data.image_size).map(dict(whole, index=0))
    np.testing.assert_array_equal(split.image[0], item["image"])


def test_pretraining_mixture_is_deterministic_and_zero_keeps_whole_scans():
    data = _data_config(fraction=0.0)
    plain = pipeline.make_source(data, "train", seed=3)
    assert type(plain) is synthetic.SyntheticUltrasoundSource  # fraction 0: the source (and renders) as before
    data = _data_config(fraction=0.5, render_size=96)
    mixed = pipeline.make_source(data, "train", seed=3)
    assert isinstance(mixed, framing.FramedMixtureSource)
    flags = [mixed.is_framed(i) for i in range(400)]
    assert 0.4 < np.mean(flags) < 0.6
    framed, whole = flags.index(True), flags.index(False)
    np.testing.assert_array_equal(mixed[whole]["image"], plain[whole]["image"])  # whole scans are unchanged
    again = pickle.loads(pickle.dumps(pipeline.make_source(data, "train", seed=3)))[framed]  # as grain's workers
    assert set(again) == set(plain[framed])
    np.testing.assert_array_equal(mixed[framed]["image"], again["image"])
    assert not np.array_equal(mixed[framed]["image"], plain[framed]["image"])


def test_framing_config_names_bad_keys_and_values():
    from usjepa_jax import config as config_lib

    c = base.get_config("smoke")
    for key, value, match in (("fov", 0.0, "framing.fov"), ("fraction", 1.5, "framing.fraction"),
                              ("tasks", "lesion,nope", "framing.tasks"), ("position_jitter", -1.0, "jitter")):
        bad = base.get_config("smoke")
        bad.data.framing[key] = value
        with pytest.raises(ValueError, match=match):
            config_lib.validate(bad)
    config_lib.validate(c)
