"""Multi-block mask sampler (I-JEPA / US-JEPA / USrc), its static-shape bounds, config plumbing and plots."""

import math
import pickle

import numpy as np
import pytest

from usjepa_jax import masks
from usjepa_jax.masks import (
    MultiBlockMaskSampler,
    default_mask_config,
    patch_valid_from_scan_mask,
)

GRID = (14, 14)
N_SAMPLES = 1500


def draw(sampler, n=N_SAMPLES, seed=0, scan_mask=None):
    rng = np.random.default_rng(seed)
    return [sampler(rng, scan_mask) for _ in range(n)]


def valid_part(idx, valid):
    return np.asarray(idx)[np.asarray(valid)]


def bbox(flat, grid):
    r, c = np.divmod(flat, grid[1])
    return r.min(), c.min(), r.max() - r.min() + 1, c.max() - c.min() + 1


@pytest.fixture(scope="module")
def default_samples():
    return draw(MultiBlockMaskSampler(GRID))


def scale_bounds(scale, aspect, n):
    """Widened range of h*w/N allowed by rounding: each side moves by at most 1/2 after rounding."""
    lo = min((max(math.sqrt(scale[0] * n * a) - 0.5, 1) * max(math.sqrt(scale[0] * n / a) - 0.5, 1)) / n
             for a in aspect)
    hi = max((math.sqrt(scale[1] * n * a) + 0.5) * (math.sqrt(scale[1] * n / a) + 0.5) / n for a in aspect)
    return lo, hi


def test_shapes_dtypes_and_padding(default_samples):
    s = MultiBlockMaskSampler(GRID)
    assert (s.target_len, s.context_len) == (25, 184)
    for out in default_samples[:200]:
        assert set(out) == {"context_idx", "context_valid", "target_idx", "target_valid"}
        assert out["context_idx"].shape == out["context_valid"].shape == (s.context_len,)
        assert out["target_idx"].shape == out["target_valid"].shape == (4, s.target_len)
        assert out["context_idx"].dtype == out["target_idx"].dtype == np.int32
        assert out["context_valid"].dtype == out["target_valid"].dtype == np.bool_
        for idx, valid in [(out["context_idx"], out["context_valid"]), *zip(out["target_idx"], out["target_valid"])]:
            k = int(valid.sum())
            assert valid[:k].all() and not valid[k:].any()  # valid part leads
            assert (idx[k:] == 0).all()  # padding is index 0
            assert np.all(np.diff(idx[:k]) > 0)  # sorted, unique
            assert idx.min() >= 0 and idx.max() < GRID[0] * GRID[1]


def test_target_sizes_and_aspects_in_range(default_samples):
    n = GRID[0] * GRID[1]
    lo, hi = scale_bounds((0.075, 0.125), (0.75, 1.5), n)
    sizes = set()
    for out in default_samples:
        for idx, valid in zip(out["target_idx"], out["target_valid"]):
            flat = valid_part(idx, valid)
            _, _, h, w = bbox(flat, GRID)
            assert len(flat) == h * w  # a full rectangle
            assert lo <= h * w / n <= hi
            # aspect h/w within [0.75, 1.5], widened for the rounding of each side
            assert (h - 0.5) / (w + 0.5) <= 1.5 and (h + 0.5) / (w - 0.5) >= 0.75
            sizes.add((h, w))
    assert sizes <= MultiBlockMaskSampler(GRID)._target_sizes
    assert len(sizes) >= 6  # variety of sizes actually drawn


def test_context_disjoint_from_targets_and_min_keep(default_samples):
    for out in default_samples:
        ctx = set(valid_part(out["context_idx"], out["context_valid"]).tolist())
        assert len(ctx) >= 10
        for idx, valid in zip(out["target_idx"], out["target_valid"]):
            tgt = valid_part(idx, valid)
            assert len(tgt) >= 10
            assert not ctx & set(tgt.tolist())


def test_context_is_block_minus_targets(default_samples):
    """Context block (13x13 or 14x14, aspect 1) minus the union of the targets; the context cannot exceed C."""
    s = MultiBlockMaskSampler(GRID)
    for out in default_samples[:300]:
        ctx = valid_part(out["context_idx"], out["context_valid"])
        union = set(np.concatenate([valid_part(i, v) for i, v in zip(out["target_idx"], out["target_valid"])]))
        top, left, h, w = bbox(ctx, GRID)
        assert h <= 14 and w <= 14 and len(ctx) <= s.context_len
        block = {r * 14 + c for r in range(top, top + h) for c in range(left, left + w)}
        assert set(ctx.tolist()) == block - union


def test_every_cell_reachable_by_default(default_samples):
    hit = np.zeros(GRID[0] * GRID[1], bool)
    for out in default_samples:
        hit[out["target_idx"][out["target_valid"]]] = True
    assert hit.all()  # including the last row and column


def test_official_corner_quirk_never_reaches_last_row_and_column():
    s = MultiBlockMaskSampler(GRID, official_corner_quirk=True)
    hit = np.zeros(GRID, bool)
    for out in draw(s, n=800):
        for flat in [out["context_idx"][out["context_valid"]], out["target_idx"][out["target_valid"]]]:
            hit.reshape(-1)[flat] = True
        covered = np.zeros(GRID, bool)
        covered.reshape(-1)[out["context_idx"][out["context_valid"]]] = True
        covered.reshape(-1)[out["target_idx"][out["target_valid"]]] = True
        assert covered[:13, :13].all()  # the context block is the 13x13 block at the top-left
    assert not hit[-1].any() and not hit[:, -1].any()
    assert hit[:-1, :-1].all()
    assert s.context_len == 13 * 13 - 12  # the context block is always 13x13; smallest target 3x4


def test_determinism_and_pickling():
    s = MultiBlockMaskSampler(GRID)
    a, b = draw(s, n=50, seed=7), draw(pickle.loads(pickle.dumps(s)), n=50, seed=7)
    c = draw(s, n=50, seed=8)
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert any(not np.array_equal(x["target_idx"], z["target_idx"]) for x, z in zip(a, c))


@pytest.mark.parametrize("cap", [40, 120])
def test_max_context_cap(cap):
    s = MultiBlockMaskSampler(GRID, max_context=cap)
    assert s.context_len == cap
    full = MultiBlockMaskSampler(GRID)
    counts = []
    for out in draw(s, n=400):
        k = int(out["context_valid"].sum())
        counts.append(k)
        assert out["context_idx"].shape == (cap,) and 10 <= k <= cap
        ctx = out["context_idx"][:k]
        assert np.all(np.diff(ctx) > 0)
        targets = out["target_idx"][out["target_valid"]]
        assert not set(ctx.tolist()) & set(targets.tolist())
    assert max(counts) == cap  # the cap is active
    assert MultiBlockMaskSampler(GRID, max_context=10_000).context_len == full.context_len


def test_bounds_are_upper_bounds_on_other_grids():
    for grid, kw in [((8, 8), {"min_keep": 4}), ((6, 6), {"min_keep": 1, "target_scale": (0.15, 0.2)}),
                     ((7, 12), {"min_keep": 2, "context_scale": (0.4, 0.6), "context_aspect": (0.5, 2.0)})]:
        s = MultiBlockMaskSampler(grid, **kw)
        for out in draw(s, n=400):
            assert out["context_valid"].sum() <= s.context_len  # would fail on shapes anyway; checked explicitly
            assert out["context_valid"].sum() >= s.min_keep
    s8 = MultiBlockMaskSampler((8, 8), min_keep=4)
    assert (s8.target_len, s8.context_len) == (9, 60)


def test_achievable_sizes_match_dense_sweep():
    """The enumeration contains every size the rule gives (dense sweep over scale and aspect)."""
    for scale, aspect, grid in [((0.075, 0.125), (0.75, 1.5), (14, 14)), ((0.85, 1.0), (1.0, 1.0), (14, 14)),
                                ((0.05, 0.6), (0.3, 3.0), (9, 13))]:
        enum = masks.achievable_block_sizes(scale, aspect, grid)
        n = grid[0] * grid[1]
        swept = {masks.block_size(s, a, n, *grid)
                 for s in np.linspace(*scale, 300) for a in np.linspace(*aspect, 300)}
        assert swept <= enum
        assert max(h * w for h, w in enum) == max(h * w for h, w in swept)


def test_patch_valid_from_scan_mask():
    m = np.zeros((28, 28), np.uint8)
    m[0, 0] = 1  # one pixel touches patch (0, 0)
    m[15:, 13] = 255  # column 13 lies in patch column 6
    v = patch_valid_from_scan_mask(m, (14, 14)).reshape(14, 14)
    assert v[0, 0] and v[7:, 6].all() and v.sum() == 1 + 7
    np.testing.assert_array_equal(patch_valid_from_scan_mask(m[..., None], (14, 14)).reshape(14, 14), v)
    m[:4, 2:6] = 1  # patches (0, 1) and (1, 1), (0, 2) and (1, 2) lie wholly inside; (0, 0) only touches it
    whole = patch_valid_from_scan_mask(m, (14, 14), whole=True).reshape(14, 14)
    assert whole[:2, 1:3].all() and whole.sum() == 4
    with pytest.raises(ValueError, match="scan_mask"):
        patch_valid_from_scan_mask(np.ones((30, 28)), (14, 14))


def sector_scan_mask(size=224):
    """A fan-shaped scan region (apex at the top centre), as a sector probe gives."""
    y, x = np.mgrid[:size, :size].astype(float)
    r = np.hypot(x - size / 2, y + size * 0.1)
    angle = np.degrees(np.arctan2(x - size / 2, y + size * 0.1))
    return (r < size * 1.05) & (np.abs(angle) < 35)


@pytest.mark.parametrize("tau", [1, 15])  # below and above min_keep=10
def test_usrc_restricts_to_valid_patches(tau):
    scan = sector_scan_mask()
    valid = patch_valid_from_scan_mask(scan, GRID)
    assert 0.3 < valid.mean() < 0.9
    s = MultiBlockMaskSampler(GRID, min_valid_in_target=tau)
    assert s.target_len == 25 and (tau > s.min_keep or s.context_len == MultiBlockMaskSampler(GRID).context_len)
    hit = np.zeros(GRID[0] * GRID[1], bool)
    for out in draw(s, n=600, scan_mask=scan):
        ctx = out["context_idx"][out["context_valid"]]
        assert valid[ctx].all() and len(ctx) >= max(s.min_keep, tau)
        for idx, ok in zip(out["target_idx"], out["target_valid"]):
            tgt = idx[ok]
            assert valid[tgt].all() and len(tgt) >= tau
            assert not set(tgt.tolist()) & set(ctx.tolist())
            hit[tgt] = True
    assert not hit[~valid].any() and hit[valid].mean() > 0.95


def test_usrc_without_scan_mask_or_tau_is_the_plain_sampler():
    scan = sector_scan_mask()
    plain = draw(MultiBlockMaskSampler(GRID), n=20, seed=3)
    ignored = draw(MultiBlockMaskSampler(GRID), n=20, seed=3, scan_mask=scan)  # tau None: scan mask ignored
    no_scan = draw(MultiBlockMaskSampler(GRID, min_valid_in_target=5), n=20, seed=3)  # no scan mask: all valid
    for a, b, c in zip(plain, ignored, no_scan):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
            np.testing.assert_array_equal(a[k], c[k])


def test_usrc_impossible_region_raises():
    scan = np.zeros((224, 224), bool)
    scan[:16, :16] = True  # a single valid patch
    s = MultiBlockMaskSampler(GRID, min_valid_in_target=4, max_tries=20)
    with pytest.raises(RuntimeError, match="min_valid_in_target"):
        s(np.random.default_rng(0), scan)


@pytest.mark.parametrize("kwargs, field", [
    ({"target_scale": (0.0, 0.1)}, "target_scale"),
    ({"target_scale": (0.2, 1.5)}, "target_scale"),
    ({"context_scale": (0.9, 0.8)}, "context_scale"),
    ({"target_aspect": (-1.0, 1.0)}, "target_aspect"),
    ({"context_aspect": (2.0, 1.0)}, "context_aspect"),
    ({"num_targets": 0}, "num_targets"),
    ({"min_keep": 0}, "min_keep"),
    ({"min_keep": 26}, "min_keep"),  # larger than any target block
    ({"max_context": 5}, "max_context"),  # below min_keep
    ({"min_valid_in_target": 0}, "min_valid_in_target"),
    ({"max_tries": 0}, "max_tries"),
    ({"grid_size": (0, 14)}, "grid_size"),
    ({"grid_size": (14,)}, "grid_size"),
    ({"grid_size": (1, 1), "official_corner_quirk": True}, "grid_size"),
    ({"num_targets": 2.5}, "num_targets"),
])
def test_invalid_arguments_name_the_field(kwargs, field):
    kwargs = {"grid_size": GRID, **kwargs}
    with pytest.raises((ValueError, TypeError), match=field):  # TypeError: not an integer at all
        MultiBlockMaskSampler(**kwargs)


def test_default_grid_8x8_needs_smaller_min_keep():
    with pytest.raises(ValueError, match="min_keep=10"):
        MultiBlockMaskSampler((8, 8))


def test_config_round_trip():
    cfg = default_mask_config()
    assert MultiBlockMaskSampler.from_config(cfg, GRID) == MultiBlockMaskSampler(GRID)
    cfg.max_context = 64
    cfg.min_valid_in_target = 3
    cfg.target_scale = [0.1, 0.2]  # lists from CLI overrides become tuples
    s = masks.mask_sampler_from_config(cfg, [14, 14])
    assert (s.max_context, s.min_valid_in_target, s.target_scale, s.grid_size) == (64, 3, (0.1, 0.2), GRID)
    hash(s)
    cfg.min_kep = 3
    with pytest.raises(ValueError, match="min_kep"):
        MultiBlockMaskSampler.from_config(cfg, GRID)


def test_overlay_and_figure(tmp_path):
    from usjepa_jax import visualize

    s = MultiBlockMaskSampler(GRID)
    samples = draw(s, n=3)
    image = np.full((224, 224), 100, np.uint8)
    rgb = visualize.overlay_masks(image[..., None], samples[0], patch_size=16)
    assert rgb.shape == (224, 224, 3) and rgb.dtype == np.uint8
    out = samples[0]
    first_ctx = out["context_idx"][0]
    r, c = divmod(int(first_ctx), 14)
    assert rgb[r * 16 + 8, c * 16 + 8, 2] > rgb[r * 16 + 8, c * 16 + 8, 0]  # context tinted blue
    untouched = np.setdiff1d(np.arange(196), np.concatenate([out["context_idx"][out["context_valid"]],
                                                             out["target_idx"][out["target_valid"]]]))
    for flat in untouched[:3]:
        r, c = divmod(int(flat), 14)
        assert (rgb[r * 16, c * 16] == 100).all()
    path = visualize.save_mask_figure([image] * 3, samples, 16, tmp_path / "figs" / "masks.png")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- per-batch padding buckets
def stack(samples):
    return {k: np.stack([s[k] for s in samples]) for k in samples[0]}


def test_bucket_ladders_end_at_the_bounds():
    s = MultiBlockMaskSampler(GRID, pad_buckets=6, pad_step=8)
    assert s.context_buckets == tuple(range(s.context_len - 40, s.context_len + 1, 8))
    assert s.target_buckets[-1] == s.target_len and min(s.target_buckets) >= 1
    assert s.max_batch_shapes == len(s.context_buckets) * len(s.target_buckets)
    full = MultiBlockMaskSampler(GRID, pad_buckets=1)
    assert (full.context_buckets, full.target_buckets) == ((full.context_len,), (full.target_len,))


def test_fit_batch_cuts_only_padding_and_shapes_stay_bounded():
    """Over many batches of 16: the cut keeps every valid entry, and few distinct shapes occur (<= the bound)."""
    s = MultiBlockMaskSampler(GRID)
    rng = np.random.default_rng(0)
    shapes = set()
    for _ in range(150):
        batch = stack([s(rng) for _ in range(16)])
        counts = masks.valid_counts(batch)
        c_len, t_len = s.batch_lengths(counts["context"], counts["target"])
        fitted = masks.fit_batch(batch, c_len, t_len)
        shapes.add((c_len, t_len))
        assert c_len >= counts["context"][1] and t_len >= counts["target"][1]
        for key in ("context", "target"):  # nothing valid is lost, and the kept part is unchanged
            assert fitted[f"{key}_valid"].sum() == batch[f"{key}_valid"].sum()
            n = fitted[f"{key}_idx"].shape[-1]
            np.testing.assert_array_equal(fitted[f"{key}_idx"], batch[f"{key}_idx"][..., :n])
        np.testing.assert_array_equal(fitted["target_valid"], batch["target_valid"][..., :t_len])
    assert 1 <= len(shapes) <= s.max_batch_shapes
    assert max(c for c, _ in shapes) < s.context_len  # the buckets do cut real padding at 224/16


def test_truncate_to_batch_min_is_the_official_rule_rounded_down_to_a_rung():
    s = MultiBlockMaskSampler(GRID, truncate_to_batch_min=True)
    rng = np.random.default_rng(1)
    batch = stack([s(rng) for _ in range(16)])
    counts = masks.valid_counts(batch)
    c_len, t_len = s.batch_lengths(counts["context"], counts["target"])
    assert c_len <= counts["context"][0] and t_len <= counts["target"][0]
    fitted = masks.fit_batch(batch, c_len, t_len)
    assert fitted["context_valid"].all() and fitted["target_valid"].all()  # every row cut to the same count
    np.testing.assert_array_equal(fitted["context_idx"], batch["context_idx"][:, :c_len])  # first patches kept
    # below the lowest rung, the minimum itself
    assert s.batch_lengths((3, 150), (2, 25)) == (3, 1)  # targets: rungs 1, 9, 17, 25


@pytest.mark.parametrize("kwargs,field", [(dict(pad_buckets=0), "pad_buckets"), (dict(pad_step=0), "pad_step"),
                                          (dict(truncate_to_batch_min="yes"), "truncate_to_batch_min")])
def test_bucket_arguments_name_the_field(kwargs, field):
    with pytest.raises((TypeError, ValueError), match=field):
        MultiBlockMaskSampler(GRID, **kwargs)
