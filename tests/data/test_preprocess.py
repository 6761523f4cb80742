"""preprocess.py: scan-region detection on a simulated fan with burned-in text, percentile rescaling, inpainting,
and the full chain's square crop of the scan region."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from usjepa_jax.data import preprocess as pp
from usjepa_jax.data.synthetic import SimulatorConfig, render


def fan_with_ui(seed):
    # A fan (sector or curvilinear) of liver without calcifications: no shadow cuts the fan's outline.
    fan = SimulatorConfig(image_size=192, geometries=("sector", "curvilinear"), organs=("liver",),
                          class_probs=(0.25, 0.25, 0.25, 0.25, 0.0))
    out = render(seed, seed, fan)
    img = np.zeros((240, 300), np.uint8)
    img[30:222, 60:252] = out["image"]
    truth = np.zeros(img.shape, bool)
    truth[30:222, 60:252] = out["scan_mask"]
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    draw.text((4, 4), "LOGIQ E9  MI 0.9  TIs 0.4  L12-5", fill=255)
    draw.text((255, 60), "D 6.0", fill=230)
    draw.text((4, 225), "FR 32Hz  G 55", fill=200)
    draw.line([(262, 90), (262, 210)], fill=255)  # depth ruler
    return np.asarray(pil), truth


@pytest.mark.parametrize("seed", [0, 1, 3, 5])
def test_scan_region_detection_on_synthetic_fan_with_ui_text(seed):
    image, truth = fan_with_ui(seed)
    found = pp.detect_scan_region(image)
    assert (found & truth).sum() / (found | truth).sum() > 0.9


def test_percentile_rescaling_inside_the_scan_region():
    rng = np.random.default_rng(0)
    gray = rng.integers(60, 160, (64, 64)).astype(np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[8:56, 8:56] = True
    gray[~mask] = 250  # bright UI outside must not set the range
    out = pp.rescale_intensity(gray, mask, 2, 98)
    inside = out[mask]
    assert (out[~mask] == 0).all()
    assert np.mean(inside == 0) == pytest.approx(0.02, abs=0.015)
    assert np.mean(inside == 255) == pytest.approx(0.02, abs=0.015)
    lo, hi = np.percentile(gray[mask], [2, 98])
    mid = gray[mask] == int((lo + hi) // 2)
    assert abs(inside[mid].mean() - 127.5) < 4


def test_inpainting_removes_coloured_marks(raw_config):
    gray = np.clip(np.add.outer(np.arange(96), np.arange(96)) * 0.8 + 20, 0, 255).astype(np.uint8)
    rgb = np.stack([gray] * 3, -1)
    marked = rgb.copy()
    marked[40:42, 10:80] = (255, 255, 0)  # a yellow caliper line: 1.5% of the image
    marked[60:66, 30:36] = (0, 200, 255)  # a cyan marker
    marks = pp.color_mask(marked)
    assert 0 < marks.mean() < 0.05
    out, _ = pp.preprocess_frame(marked, raw_config.__class__(**{**raw_config.__dict__, "inpaint": True}))
    assert np.abs(out.astype(int) - gray)[marks].max() <= 6  # marks gone, the gradient restored
    assert np.array_equal(out[~marks], gray[~marks])
    kept, _ = pp.preprocess_frame(marked, raw_config)  # switch off: the marks stay (as grey)
    assert np.abs(kept.astype(int) - gray)[marks].max() > 50
    big = rgb.copy()
    big[:20] = (255, 0, 0)  # over 5% coloured: converted only, not inpainted
    out_big, _ = pp.preprocess_frame(big, raw_config.__class__(**{**raw_config.__dict__, "inpaint": True}))
    assert np.array_equal(out_big[:20], pp.luma(big)[:20])


def test_full_preprocessing_crops_to_a_square_of_the_scan_region():
    image, _ = fan_with_ui(0)
    out, mask = pp.preprocess_frame(np.stack([image] * 3, -1), pp.PreprocessConfig(size=64))
    assert out.shape == mask.shape == (64, 64) and out.dtype == np.uint8
    assert (out[~mask] == 0).all() and out[mask].max() >= 240  # the full range, up to the resize's averaging
    assert mask[:, 32].any() and mask[32].any()
