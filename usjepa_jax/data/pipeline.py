"""The grain input pipeline that the trainer consumes.

``MapDataset.source`` -> shuffle (seeded, reshuffled every epoch) -> repeat -> augmentations (off by default,
at render resolution) -> resize to the model's input -> per-example mask sampling (``masks.py``, in numpy) ->
per-process slice ``[process_index::process_count]`` -> batch (fixed shapes) -> ``to_iter_dataset`` ->
multiprocess prefetch when ``worker_count > 0``.

Every random step is a grain ``RandomMap`` seeded from the config, so the stream of batches is a pure function of
(seed, step): the iterator's ``get_state()`` / ``set_state()`` resume it exactly, workers included.

Batch (per process, ``B = global_batch_size // process_count``): ``image`` uint8 ``[B, S, S, 1]`` (uint8 keeps
host-to-device traffic 4x smaller; the trainer normalises on device with ``data.mean``/``data.std``),
``label`` int32 ``[B]``, ``scan_mask`` uint8 ``[B, S, S]``, ``index`` int32 ``[B]``, plus the mask sampler's keys.
"""

from __future__ import annotations

from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import scipy.ndimage
from PIL import Image

from usjepa_jax.data import framing
from usjepa_jax.data.preprocess import resize_square
from usjepa_jax.data.seeding import derive_seed
from usjepa_jax.data.settings import SOURCES, SPLIT_STREAMS, simulator_config
from usjepa_jax.data.simulator.source import SyntheticUltrasoundSource
from usjepa_jax.data.sources import make_real_source


def make_source(data_config: ml_collections.ConfigDict, split: str, seed: int):
    if data_config.source not in SOURCES:
        raise ValueError(f"config.data.source={data_config.source!r}: expected one of {SOURCES}.")
    if split not in SPLIT_STREAMS:
        raise ValueError(f"split={split!r}: expected one of {tuple(SPLIT_STREAMS)}.")
    if data_config.source != "synthetic":
        return make_real_source(data_config, split, seed)
    num = data_config.num_train if split == "train" else data_config.num_val
    fraction = framing.framing_config(data_config)["fraction"]
    if fraction > 0:  # whole scans and framed views, as clinical archives hold both
        return framing.FramedMixtureSource(num, derive_seed(seed, SPLIT_STREAMS[split]), simulator_config(data_config),
                                           framing.framing_from_config(data_config), fraction)
    return SyntheticUltrasoundSource(num, derive_seed(seed, SPLIT_STREAMS[split]), simulator_config(data_config))


# ------------------------------------------------------------------------------------------------ transforms
def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """The scan mask resized with the image's own (bilinear) filter, kept where it has any weight (uint8 0/1).

    So the resized mask covers every pixel the resized image can take from the scan region: outside it the image
    stays black (or burned-in overlay), never an interpolated edge.
    """
    if mask.shape == (size, size):
        return mask.astype(np.uint8)
    return (resize_square(mask.astype(np.uint8) * np.uint8(255), size, Image.BILINEAR) > 0).astype(np.uint8)


class Augment(grain.transforms.RandomMap):
    """The paper's augmentations, each a switch: random resized crop, flips, blur, speckle, contrast."""

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = dict(cfg)

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        c = self.cfg
        image, mask = element["image"], element["scan_mask"].astype(np.uint8)
        size = image.shape[0]
        if c.get("random_resized_crop", True):  # area fraction and aspect ratio, back to the same size
            scale = rng.uniform(*c["random_resized_crop_scale"])
            ratio = np.exp(rng.uniform(*np.log(c["random_resized_crop_ratio"])))
            w = int(min(size, round(size * np.sqrt(scale * ratio))))
            h = int(min(size, round(size * np.sqrt(scale / ratio))))
            top, left = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
            image = resize_square(image[top:top + h, left:left + w], size, Image.BILINEAR)
            mask = _resize_mask(mask[top:top + h, left:left + w], size)
        if c["hflip"] and rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if c["vflip"] and rng.random() < 0.5:
            image, mask = image[::-1], mask[::-1]
        x = image.astype(np.float32)
        if rng.random() < c["blur_prob"]:
            x = scipy.ndimage.gaussian_filter(x, rng.uniform(*c["blur_sigma"]))
        if rng.random() < c["speckle_prob"]:  # multiplicative correlated speckle I * (1 + eta * K)
            k = scipy.ndimage.gaussian_filter(rng.standard_normal(x.shape).astype(np.float32),
                                              c["speckle_correlation"])
            k /= k.std() + 1e-6
            x = x * (1.0 + rng.uniform(*c["speckle_sigma"]) * k)
        if rng.random() < c["contrast_prob"]:  # contrast around the median inside the scan region
            inside = mask > 0
            median = float(np.median(x[inside])) if inside.any() else 0.0
            x = median + (x - median) * rng.uniform(*c["contrast_range"])
        # Photometric changes act on the scan region only: outside stays black, burned-in text stays as it was.
        x = np.where(mask > 0, np.clip(np.rint(x), 0, 255), image)
        return dict(element, image=x.astype(np.uint8), scan_mask=mask.astype(bool))


class ToModelInput(grain.transforms.Map):
    """Resize to the model's input; ``image`` ``[S, S, 1]`` uint8, ``scan_mask`` uint8; drops the segmentation.

    The image is not cut to the scan mask: burned-in overlays (text, depth ruler) outside it stay, as in real
    scanner exports; outside the scan region everything else is already black.
    """

    def __init__(self, image_size: int):
        self.image_size = image_size

    def map(self, element: dict) -> dict:
        image = resize_square(element["image"], self.image_size, Image.BILINEAR)
        mask = _resize_mask(element["scan_mask"], self.image_size)
        return dict(image=image[..., None], scan_mask=mask, label=np.int32(element["label"]),
                    index=np.int32(element["index"]))


class SampleMasks(grain.transforms.RandomMap):
    """Per-example context/target masks from a ``MultiBlockMaskSampler`` (fixed shapes), merged into the example."""

    def __init__(self, sampler):
        self.sampler = sampler

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        return dict(element, **self.sampler(rng, scan_mask=element["scan_mask"]))


# ------------------------------------------------------------------------------------------------ dataset
def build_dataset(data_config: ml_collections.ConfigDict, *, global_batch_size: int, split: str = "train",
                  seed: int, mask_sampler=None, process_index: int | None = None, process_count: int | None = None,
                  num_epochs: int | None = None, drop_remainder: bool = True, shuffle: bool | None = None,
                  teacher_targets: grain.transforms.Map | None = None) -> grain.IterDataset:
    """The batched iterable dataset of this process. ``num_epochs=None`` repeats forever (train default).

    ``teacher_targets``: a transform attaching precomputed targets by ``index`` (``encoders/cache.py``).
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} is not divisible by {process_count} processes.")
    shuffle = data_config.shuffle and split == "train" if shuffle is None else shuffle

    ds = grain.MapDataset.source(make_source(data_config, split, seed))
    if shuffle:
        ds = ds.shuffle(seed=derive_seed(seed, 10) % 2**32)
    ds = ds.repeat(num_epochs)
    # Random transforms run before the per-process slice (MapDataset is lazy: each process still computes only
    # its own elements), so every element's augmentation and masks depend on its global position only: the
    # same seed gives the same global batches whatever the number of processes.
    if data_config.augment.enabled and split == "train":
        ds = ds.random_map(Augment(data_config.augment.to_dict()), seed=derive_seed(seed, 11) % 2**32)
    ds = ds.map(ToModelInput(data_config.image_size))
    if teacher_targets is not None:
        ds = ds.map(teacher_targets)
    if mask_sampler is not None:
        ds = ds.random_map(SampleMasks(mask_sampler), seed=derive_seed(seed, 12) % 2**32)
    ds = ds[process_index::process_count]
    ds = ds.batch(global_batch_size // process_count, drop_remainder=drop_remainder)
    iter_ds = ds.to_iter_dataset()
    if data_config.worker_count > 0:
        options = grain.MultiprocessingOptions(num_workers=data_config.worker_count,
                                               per_worker_buffer_size=data_config.worker_buffer_size)
        iter_ds = iter_ds.mp_prefetch(options)
    return iter_ds
