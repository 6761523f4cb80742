"""The ultrasound simulator: determinism, seeds, Rayleigh statistics, PSF grain in mm, contrast, tasks, scenes."""

import json

import numpy as np
import pytest

from usjepa_jax.data import synthetic as sim
from usjepa_jax.data.simulator.acquisition import ScanGeometry, lateral_fwhm_mm

SMALL = sim.SimulatorConfig(image_size=96)
LINEAR = ScanGeometry("linear", 40.0, 38.0)


def base_training_size() -> int:
    from configs.base import get_config

    return int(get_config().data.synthetic.image_size)


def test_same_seeds_same_bytes_and_types():
    a, b = sim.render(3, 4, SMALL), sim.render(3, 4, SMALL)
    assert a["image"].dtype == np.uint8 and a["image"].shape == (96, 96)
    assert a["segmentation"].dtype == np.uint8 and a["scan_mask"].dtype == bool
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["segmentation"], b["segmentation"])
    assert not np.array_equal(a["image"], sim.render(5, 4, SMALL)["image"])


def test_golden_bytes_are_stable_across_machines():
    # A checksum of a fixed render: changes only when the simulator itself changes (then update it knowingly).
    image = sim.render(0, 0, SMALL)["image"]
    assert int(image.astype(np.int64).sum()) == 355_153


def test_new_speckle_keeps_the_anatomy():
    base = sim.render(11, 1, SMALL)
    other = sim.render(11, 2, SMALL)
    assert base["labels"] == other["labels"]
    np.testing.assert_array_equal(base["segmentation"], other["segmentation"])
    np.testing.assert_array_equal(base["scan_mask"], other["scan_mask"])
    inside = base["scan_mask"]
    diff = np.abs(base["image"].astype(int) - other["image"].astype(int))[inside]
    assert diff.mean() > 3  # speckle differs everywhere in the scan region (averaged by the anti-aliasing)
    assert np.all(base["image"][~inside] == 0) and np.all(other["image"][~inside] == 0)


def test_fully_developed_speckle_is_rayleigh():
    ratios = []
    for seed in range(3):
        env, _, _ = sim.render_homogeneous(seed, SMALL, LINEAR)
        ratios.append(env.mean() / env.std())
    assert np.mean(ratios) == pytest.approx(1.913, rel=0.05), ratios


def correlation_fwhm(intensity: np.ndarray, axis: int) -> float:
    """FWHM (in samples) of the speckle intensity autocorrelation along ``axis``, from its lag-1 value.

    For a Gaussian PSF of amplitude FWHM W the intensity autocorrelation is a Gaussian of FWHM W."""
    x = np.moveaxis(intensity, axis, -1)
    x = x - x.mean(axis=-1, keepdims=True)
    rho = np.mean(x[..., 1:] * x[..., :-1]) / np.mean(x * x)
    return float(2.3548 * np.sqrt(-1 / (2 * np.log(rho))))


def test_speckle_grain_in_mm_matches_the_psf_theory():
    env, grid, pulse = sim.render_homogeneous(0, SMALL, LINEAR)
    intensity = env.astype(np.float64) ** 2
    theory = sim.psf_fwhm_mm(LINEAR, pulse)
    axial = correlation_fwhm(intensity, 0) * grid.dz_mm
    assert axial == pytest.approx(theory["axial"], rel=0.2)
    # Laterally, per depth band, against W(z) (narrowest at the focus, wider away from it).
    z = (np.arange(grid.axial) + 0.5) * grid.dz_mm
    for band in np.array_split(np.arange(grid.axial), 6):
        measured = correlation_fwhm(intensity[band], 1) * grid.dline
        expected = float(np.mean(lateral_fwhm_mm(z[band], pulse["frequency_mhz"], pulse["f_number"],
                                                     pulse["focal_mm"], LINEAR.probe.aperture_mm)))
        assert measured == pytest.approx(expected, rel=0.2), (z[band].mean(), measured, expected)
    # The linear probe resolves finer in range than across: axial grain finer than lateral.
    assert axial < correlation_fwhm(intensity, 1) * grid.dline


def test_grain_is_the_same_physical_size_at_two_output_sizes():
    # The acquisition does not depend on the output size: the same envelope, in mm, at 64 and 224 px.
    a = sim.render(7, 3, sim.SimulatorConfig(image_size=64), return_envelope=True)
    b = sim.render(7, 3, sim.SimulatorConfig(image_size=224), return_envelope=True)
    np.testing.assert_array_equal(a["envelope"], b["envelope"])
    assert a["grid"] == b["grid"]
    # On the B-mode images of a homogeneous scan, measured in mm, at two sizes that resolve the grain.
    widths = []
    for size in (160, 320):
        image, mask, pixel = sim.bmode_homogeneous(0, sim.SimulatorConfig(image_size=size), LINEAR)
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.all(axis=0))
        region = image[rows[len(rows) // 3]:rows[2 * len(rows) // 3], cols[2]:cols[-2]].astype(np.float64)
        widths.append(correlation_fwhm(region, 1) * pixel)
    assert widths[0] == pytest.approx(widths[1], rel=0.2), widths


def test_rendered_envelope_is_returned_before_log_compression():
    out = sim.render(2, 3, SMALL, return_envelope=True)
    assert out["envelope"].dtype == np.float32 and out["envelope"].shape == out["grid"].shape
    assert out["envelope"].min() >= 0 and "envelope" not in sim.render(2, 3, SMALL)


def test_labels_match_the_phantom():
    seen = set()
    for seed in range(40):
        out = sim.render(seed, 0, SMALL)
        label, seg = out["label"], out["segmentation"]
        assert out["labels"]["lesion"] == label
        seen.add(label)
        lesion_pixels = {s: int((seg == sim.LESION_SEGMENT[s]).sum()) for s in sim.LESION_SEGMENT}
        if label == 0:
            assert sum(lesion_pixels.values()) == 0
        else:
            assert lesion_pixels[label] > 0, (seed, label)  # the lesion is in the scan region
            assert all(n == 0 for s, n in lesion_pixels.items() if s != label)
        assert (out["labels"]["margin"] >= 0) == (label in sim.SOLID_LESIONS)
        assert np.all(seg[~out["scan_mask"]] == sim.SEG["outside"])
    assert seen == set(range(len(sim.CLASS_NAMES)))


ORGAN_CODE = {"liver": "liver", "kidney": "renal_sinus", "thyroid": "thyroid", "bladder": "bladder",
              "muscle": "bone"}


@pytest.mark.parametrize("organ", sim.ORGANS)
def test_each_organ_family_renders_its_layout(organ):
    for seed in range(3):
        out = sim.render(seed, 0, SMALL, scene={"organ": organ})
        assert out["labels"]["organ"] == sim.ORGANS.index(organ) and out["params"]["organ"] == organ
        assert (out["segmentation"] == sim.SEG[ORGAN_CODE[organ]]).any(), (organ, seed)
        assert out["image"][out["scan_mask"]].std() > 10


def test_scene_overrides_are_honoured():
    for seed in range(6):
        scene = {"organ": "thyroid", "lesion": "hypoechoic_solid", "margin": "spiculated", "grade": 2}
        out = sim.render(seed, 1, SMALL, scene=scene)
        assert out["labels"] == {"lesion": 2, "organ": sim.ORGANS.index("thyroid"), "margin": 2, "grade": 2}
        assert out["params"]["margin"] == "spiculated" and out["params"]["grade"] == 2
    # A margin alone draws a solid lesion; labels that do not apply are -1.
    assert sim.render(4, 0, SMALL, scene={"margin": "lobulated"})["label"] in sim.SOLID_LESIONS
    assert sim.render(4, 0, SMALL, scene={"lesion": "cyst"})["labels"]["margin"] == -1
    # Fixing one label leaves the anatomy's other draws alone.
    free, fixed = sim.render(9, 0, SMALL), sim.render(9, 0, SMALL, scene={"grade": 0})
    assert {k: v for k, v in free["labels"].items() if k != "grade"} == \
        {k: v for k, v in fixed["labels"].items() if k != "grade"}
    with pytest.raises(ValueError, match="margin"):
        sim.render(0, 0, SMALL, scene={"lesion": "cyst", "margin": "smooth"})
    with pytest.raises(ValueError, match="organ"):
        sim.render(0, 0, SMALL, scene={"organ": "brain"})
    with pytest.raises(ValueError, match="colour"):
        sim.render(0, 0, SMALL, scene={"colour": 1})


def test_grades_raise_echogenicity_and_attenuation():
    hosts = [sim.render(5, 0, SMALL, scene={"grade": g})["params"] for g in range(3)]
    echo = [h["host_echo_db"] for h in hosts]
    atten = [h["host_atten_db_cm_mhz"] for h in hosts]
    assert echo[0] < echo[1] < echo[2] and atten[0] < atten[1] < atten[2]


def test_every_lesion_class_is_visible_at_the_base_training_size():
    # Median CNR (|mean in - mean ring| / std ring on the B-mode image) >= 1, cysts >= 3, on a small sample.
    config = sim.SimulatorConfig(image_size=base_training_size(), overlay_prob=0.0)
    for label in range(1, len(sim.CLASS_NAMES)):
        cnrs = []
        for seed in range(12):
            out = sim.render(seed, seed, config, scene={"lesion": sim.CLASS_NAMES[label]})
            cnrs.append(sim.lesion_cnr(out["image"], out["segmentation"], sim.LESION_SEGMENT[label],
                                       out["scan_mask"]))
        floor = 3.0 if label == 1 else 1.0
        assert np.nanmedian(cnrs) >= floor, (sim.CLASS_NAMES[label], np.round(cnrs, 2))


def test_margins_share_size_and_contrast_distributions():
    stats = {m: [] for m in sim.MARGINS}
    for seed in range(30):
        for margin in sim.MARGINS:
            p = sim.render(seed, 0, sim.SimulatorConfig(image_size=32), scene={"margin": margin})["params"]
            stats[margin].append((p["lesion_diameter_mm"], abs(p["lesion_contrast_db"])))
    # The same anatomy seed draws the same size and contrast whatever the margin.
    assert stats["smooth"] == stats["lobulated"] == stats["spiculated"]


def test_class_is_not_given_away_by_global_brightness():
    # The same anatomies rendered with each lesion class: class means differ less than images do.
    config = sim.SimulatorConfig(image_size=32, overlay_prob=0.0)
    means = np.asarray([[sim.render(seed, 0, config, scene={"lesion": name})["image"].mean()
                         for name in sim.CLASS_NAMES] for seed in range(20)])  # [anatomy, class]
    assert np.ptp(means.mean(axis=0)) < means.mean(axis=1).std()


def test_source_is_deterministic_and_picklable():
    import pickle

    source = sim.SyntheticUltrasoundSource(10, seed=1, config=SMALL)
    clone = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(source[3]["image"], clone[3]["image"])
    assert len(source) == 10 and source[3]["index"] == 3
    assert set(sim.TASK_CLASSES) <= {k[len("label_"):] for k in source[3] if k.startswith("label_")}
    with pytest.raises(IndexError):
        source[10]
    shifted = sim.SyntheticUltrasoundSource(10, seed=1, config=SMALL, speckle_seed_offset=1)
    np.testing.assert_array_equal(shifted[3]["segmentation"], source[3]["segmentation"])


def test_cli_writes_a_browsable_sample(tmp_path, capsys):
    sim.main(["--out", str(tmp_path), "--num", "4", "--size", "64", "--contact-sheet", str(tmp_path / "s.png")])
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert len(labels["examples"]) == 4 and set(labels["examples"][0]["labels"]) == set(sim.TASK_CLASSES)
    assert (tmp_path / labels["examples"][0]["file"]).exists()
    assert (tmp_path / "scan_mask" / "000000.png").exists() and (tmp_path / "s.png").exists()
    assert "wrote 4 images" in capsys.readouterr().out
    sim.main(["--cnr-table", "--sizes", "32", "--num", "6"])
    assert "| 32 |" in capsys.readouterr().out


def test_invalid_config_names_the_field():
    with pytest.raises(ValueError, match="geometries"):
        sim.SimulatorConfig(geometries=("convex",))
    with pytest.raises(ValueError, match="organs"):
        sim.SimulatorConfig(organs=("brain",))
    with pytest.raises(ValueError, match="dynamic_range_db"):
        sim.SimulatorConfig(dynamic_range_db=(60.0, 40.0))
    with pytest.raises(ValueError, match="samples_per_cell"):
        sim.SimulatorConfig(samples_per_cell=1.0)


def test_acquisition_seed_separates_scanner_from_phantom():
    cfg = sim.SimulatorConfig(image_size=64)
    a = sim.render(1, 7, cfg, acquisition_seed=99)
    b = sim.render(2, 7, cfg, acquisition_seed=99)
    scanner = ("geometry", "geometry_variant", "frequency_mhz", "gain_db", "dynamic_range_db", "overlay")
    assert all(a["params"][key] == b["params"][key] for key in scanner)
    assert np.array_equal(a["scan_mask"], b["scan_mask"])
    assert not np.array_equal(a["segmentation"], b["segmentation"])  # the phantoms differ
    # Without it every setting comes from the anatomy seed, as before (the golden checksum pins that).
    assert sim.render(1, 7, cfg)["params"] == sim.render(1, 7, cfg, acquisition_seed=None)["params"]


def test_probe_presets_are_clinical():
    ranges = {"linear": ((5, 12), (30, 60)), "curvilinear": ((2, 5), (100, 200)), "sector": ((1.5, 4), (100, 160))}
    for kind, ((f_lo, f_hi), (d_lo, d_hi)) in ranges.items():
        probe = sim.PROBES[kind]
        assert f_lo <= probe.frequency_mhz[0] and probe.frequency_mhz[1] <= f_hi
        assert d_lo <= min(probe.depths_mm) and max(probe.depths_mm) <= d_hi
    for seed in range(20):
        p = sim.render(seed, 0, sim.SimulatorConfig(image_size=32))["params"]
        lo, hi = sim.PROBES[p["geometry"]].frequency_mhz
        assert lo <= p["frequency_mhz"] <= hi
        # The grid samples the PSF at >= 2 samples per FWHM in each direction (laterally: at the focus, where the
        # beam is narrowest; linear probe, in mm).
        depth = p["depth_mm"]
        assert p["axial_fwhm_mm"] >= 2 * depth / p["grid"][0] * 0.999
        if p["geometry"] == "linear":
            assert p["lateral_fwhm_mm"] >= 2 * p["span"] / p["grid"][1] * 0.999


def test_prerender_into_the_prepared_arrayrecord_format(tmp_path):
    from usjepa_jax.data import shards

    config = sim.SimulatorConfig(image_size=32)
    summary = sim.prerender(tmp_path / "pre", 5, config, seed=3, shard_size=2, progress=False)
    assert summary["images"] == 5 and summary["shards"] == 3
    store = shards.PreparedStore([tmp_path / "pre"])
    prepared = shards.PreparedSource("synthetic", store.shard_paths, store.files)
    rendered = sim.SyntheticUltrasoundSource(5, 3, config)
    for i in range(5):
        np.testing.assert_array_equal(prepared[i]["image"], rendered[i]["image"])
        np.testing.assert_array_equal(prepared[i]["scan_mask"], rendered[i]["scan_mask"])
        assert prepared[i]["label"] == rendered[i]["label"]
    with pytest.raises(FileExistsError):
        sim.prerender(tmp_path / "pre", 5, config)
