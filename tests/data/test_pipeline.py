"""The grain pipeline: fixed shapes and dtypes, per-process slices, exact resume, augmentation switches."""

import numpy as np
import pytest
from absl import flags

from usjepa_jax.data import pipeline, settings


class DummyMasks:
    """A module-level (picklable) stand-in for the mask sampler."""

    def __call__(self, rng, scan_mask=None):
        return {"context_idx": rng.integers(0, 16, 5).astype(np.int32), "context_valid": np.ones(5, bool)}


def small_config(**augment):
    c = settings.default_data_config()
    c.image_size, c.num_train, c.num_val = 32, 24, 8
    c.synthetic.image_size = 48
    c.augment.update(augment)
    return c


def batches(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_batches_have_fixed_shapes_and_dtypes():
    it = iter(pipeline.build_dataset(small_config(), global_batch_size=4, seed=0, mask_sampler=DummyMasks()))
    for batch in batches(it, 8):  # crosses an epoch boundary (24 images = 6 batches)
        assert batch["image"].shape == (4, 32, 32, 1) and batch["image"].dtype == np.uint8
        assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
        assert batch["scan_mask"].shape == (4, 32, 32)
        assert batch["context_idx"].shape == (4, 5) and batch["context_idx"].dtype == np.int32


def test_epochs_cover_the_data_and_reshuffle():
    it = iter(pipeline.build_dataset(small_config(), global_batch_size=4, seed=0))
    epoch1 = np.concatenate([b["index"] for b in batches(it, 6)])
    epoch2 = np.concatenate([b["index"] for b in batches(it, 6)])
    assert sorted(epoch1) == list(range(24)) == sorted(epoch2)
    assert not np.array_equal(epoch1, epoch2)


def test_process_slices_are_disjoint_and_cover_the_data():
    seen = []
    for p in range(2):
        it = iter(pipeline.build_dataset(small_config(), global_batch_size=4, seed=0, process_index=p,
                                         process_count=2, num_epochs=1))
        part = np.concatenate([b["index"] for b in batches(it, 6)])
        assert len(part) == 12
        seen.append(set(part.tolist()))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(24))


@pytest.mark.parametrize("workers", [0, 1])
def test_iterator_state_round_trips(workers):
    flags.FLAGS.mark_as_parsed()  # grain's multiprocess prefetch reads absl flags
    config = small_config(enabled=True)
    config.worker_count = workers

    def make():
        return iter(pipeline.build_dataset(config, global_batch_size=4, seed=3, mask_sampler=DummyMasks()))

    it = make()
    batches(it, 3)
    state = it.get_state()
    expected = batches(it, 2)
    resumed = make()
    resumed.set_state(state)
    for want, got in zip(expected, batches(resumed, 2), strict=True):
        for key in want:
            np.testing.assert_array_equal(want[key], got[key])


def test_augmentations_change_images_and_keep_black_outside_the_scan():
    config = small_config(enabled=True)
    config.synthetic.overlay_prob = 0.0  # burned-in text may sit outside the scan region
    plain = next(iter(pipeline.build_dataset(small_config(), global_batch_size=4, seed=0)))
    augmented = next(iter(pipeline.build_dataset(config, global_batch_size=4, seed=0)))
    np.testing.assert_array_equal(plain["index"], augmented["index"])
    assert not np.array_equal(plain["image"], augmented["image"])
    outside = augmented["scan_mask"] == 0
    assert outside.any() and np.all(augmented["image"][..., 0][outside] == 0)


def test_geometric_augmentations_move_image_and_scan_mask_together():
    flips = dict(enabled=True, random_resized_crop=False, hflip=True, vflip=True, blur_prob=0.0, speckle_prob=0.0,
                 contrast_prob=0.0)
    plain = next(iter(pipeline.build_dataset(small_config(), global_batch_size=8, seed=1)))
    flipped = next(iter(pipeline.build_dataset(small_config(**flips), global_batch_size=8, seed=1)))
    moved = 0
    for i in range(8):
        candidates = [(a, m) for a, m in ((plain["image"][i], plain["scan_mask"][i]),) for a, m in
                      ((a, m), (a[:, ::-1], m[:, ::-1]), (a[::-1], m[::-1]), (a[::-1, ::-1], m[::-1, ::-1]))]
        matches = [k for k, (a, m) in enumerate(candidates)
                   if np.array_equal(a, flipped["image"][i]) and np.array_equal(m, flipped["scan_mask"][i])]
        assert matches, i  # one of the four flips, applied to image and mask alike
        moved += matches[0] > 0
    assert moved > 0


def test_augmentation_with_every_switch_off_is_the_identity():
    off = dict(enabled=True, random_resized_crop=False, hflip=False, vflip=False, blur_prob=0.0, speckle_prob=0.0,
               contrast_prob=0.0)
    plain = next(iter(pipeline.build_dataset(small_config(), global_batch_size=4, seed=0)))
    same = next(iter(pipeline.build_dataset(small_config(**off), global_batch_size=4, seed=0)))
    for key in plain:
        np.testing.assert_array_equal(plain[key], same[key])


def test_train_and_val_splits_are_disjoint():
    config = small_config()
    train, val = (pipeline.make_source(config, split, seed=0) for split in ("train", "val"))
    train_seeds = {train.seeds(i)[0] for i in range(len(train))}
    val_seeds = {val.seeds(i)[0] for i in range(len(val))}
    assert len(train_seeds) == len(train) and not train_seeds & val_seeds
    val_batch = next(iter(pipeline.build_dataset(config, global_batch_size=4, split="val", seed=0, num_epochs=1)))
    np.testing.assert_array_equal(val_batch["index"], np.arange(4))  # val is never shuffled


def test_unknown_simulator_key_is_named():
    config = small_config()
    config.synthetic.dynamic_range = 50
    with pytest.raises(ValueError, match="dynamic_range"):
        pipeline.build_dataset(config, global_batch_size=4, seed=0)


def test_examples_do_not_depend_on_the_process_count():
    config = small_config(enabled=True)
    single = next(iter(pipeline.build_dataset(config, global_batch_size=4, seed=0, mask_sampler=DummyMasks())))
    rows = {}
    for p in range(2):
        part = next(iter(pipeline.build_dataset(config, global_batch_size=4, seed=0, mask_sampler=DummyMasks(),
                                                process_index=p, process_count=2)))
        for i, index in enumerate(part["index"]):
            rows[int(index)] = {k: v[i] for k, v in part.items()}
    assert sorted(rows) == sorted(single["index"].tolist())
    for i, index in enumerate(single["index"]):
        for key in single:
            np.testing.assert_array_equal(single[key][i], rows[int(index)][key])
