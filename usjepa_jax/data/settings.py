"""The ``config.data`` subtree: its defaults, the sources and splits it can name, and the simulator settings it
holds. Free of jax and grain, so the config schema can be read without them (the pipeline that uses it:
``pipeline.py``)."""

from __future__ import annotations

import dataclasses

import ml_collections

from usjepa_jax.data import framing
from usjepa_jax.data.preprocess import default_preprocess_dict
from usjepa_jax.data.simulator.config import SimulatorConfig

SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}  # split -> seed stream of its images: derive_seed(seed, stream)
SOURCES = ("synthetic", "files", "ultrabench", "prepared")  # real data: data/sources.py


def default_data_config() -> ml_collections.ConfigDict:
    """The ``config.data`` subtree. Every key is overridable from the command line (``--config.data.KEY=...``)."""
    simulator = {k: list(v) if isinstance(v, tuple) else v
                 for k, v in dataclasses.asdict(SimulatorConfig()).items()}
    return ml_collections.ConfigDict(dict(
        source="synthetic",  # the built-in simulator (data/synthetic.py); the only source so far
        image_size=224,  # model input (square, pixels); rendered images are resized to it (bilinear)
        num_train=100_000,  # images per epoch of the train split
        num_val=1_000,  # held-out images of the val split, rendered from a disjoint seed stream
        mean=0.5, std=0.5,  # on-device normalisation (image / 255 - mean) / std, applied by the trainer
        # SimulatorConfig fields (ranges are [low, high], sampled per image from its anatomy seed);
        # synthetic.image_size is the render resolution, independent of the model's image_size.
        synthetic=simulator,
        # Views framed on the lesion site (data/framing.py): which simulated tasks are framed, the share of
        # framed views among the pretraining images, and the window (size in lesion diameters, jitter).
        framing=framing.default_framing_config(),
        augment=dict(
            enabled=False,  # master switch; off = augmentation-free (I-JEPA sense), the paper's list is opt-in
            random_resized_crop=True,  # crop a random area fraction / aspect ratio, resized back
            random_resized_crop_scale=(0.6, 1.0),  # area fraction of the crop
            random_resized_crop_ratio=(0.75, 4 / 3),  # aspect ratio (w / h) of the crop, log-uniform
            hflip=True,  # horizontal flip with probability 1/2
            vflip=True,  # vertical flip with probability 1/2
            blur_prob=0.5, blur_sigma=(0.2, 1.5),  # Gaussian blur: probability (0 = off), sigma range (px)
            # multiplicative correlated speckle I * (1 + eta * K), K unit-variance noise smoothed with
            # speckle_correlation (px): probability (0 = off), range of eta's scale
            speckle_prob=0.5, speckle_sigma=(0.05, 0.3), speckle_correlation=1.5,
            contrast_prob=0.5, contrast_range=(0.7, 1.3),  # contrast about the in-scan median: probability, factor
        ),
        # Real data (source files | ultrabench | prepared; data/sources.py, data/mixture.py): input directories,
        # optional dataset-name filter, per-dataset epoch cap N_t, hold-out fraction (by file), bad-file policy.
        paths=[],
        datasets=[],
        cap_per_dataset=50_000,
        mixture_epochs=1,  # capped-dataset epochs per pass of the train source (fresh subsets each), mixture.py
        val_fraction=0.05,
        on_error="skip",  # a bad file is logged and skipped ('skip') or fails the run ('raise')
        nifti_axis=-1,  # NIfTI frames: slices along this axis (volumes) / time points (2-D+t)
        video_stride=1,  # cine video (.avi/.mp4): every k-th frame
        h5_key="",  # HDF5: the dataset holding the frames ('' = the only image-like one, data/containers.py)
        preprocess=default_preprocess_dict(),  # raw sources only (prepared data was preprocessed once)
        shuffle=True,  # reshuffle the train split every epoch (val/test are never shuffled)
        worker_count=0,  # grain worker processes (0: in the training process)
        worker_buffer_size=2,  # batches buffered per worker
    ))


def simulator_config(data_config: ml_collections.ConfigDict) -> SimulatorConfig:
    fields = {f.name for f in dataclasses.fields(SimulatorConfig)}
    unknown = set(data_config.synthetic) - fields
    if unknown:
        raise ValueError(f"config.data.synthetic: unknown keys {sorted(unknown)}; known: {sorted(fields)}.")
    values = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in data_config.synthetic.items()}
    return SimulatorConfig(**values)
