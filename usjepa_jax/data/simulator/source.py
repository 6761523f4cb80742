"""The simulator as a grain random-access source: image ``index`` from seeds derived from ``(seed, index)``."""

from __future__ import annotations

from typing import Any

import numpy as np

from usjepa_jax.data.seeding import derive_seed
from usjepa_jax.data.simulator.config import SimulatorConfig
from usjepa_jax.data.simulator.render import render


class SyntheticUltrasoundSource:
    """Grain random-access source: ``index -> render(anatomy_seed(seed, index), speckle_seed(seed, index))``.

    Picklable and deterministic, so an epoch of ``num_examples`` images is the same on every machine and in every
    worker process. ``speckle_seed_offset`` renders the same anatomies under new speckle; ``scene`` fixes labels
    (``render``'s ``scene``) for every image.
    """

    def __init__(self, num_examples: int, seed: int = 0, config: SimulatorConfig = SimulatorConfig(),
                 speckle_seed_offset: int = 0, scene: dict | None = None):
        self.num_examples, self.seed, self.config = int(num_examples), int(seed), config
        self.speckle_seed_offset = int(speckle_seed_offset)
        self.scene = dict(scene) if scene else None

    def __len__(self) -> int:
        return self.num_examples

    def seeds(self, index: int) -> tuple[int, int]:
        return derive_seed(self.seed, index, 0), derive_seed(self.seed, index, 1, self.speckle_seed_offset)

    def render_index(self, index: int) -> dict[str, Any]:
        """``render``'s output for image ``index`` (a subclass renders other views: data/framing.py)."""
        anatomy_seed, speckle_seed = self.seeds(index)
        return render(anatomy_seed, speckle_seed, self.config, scene=self.scene)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} synthetic images")
        out = self.render_index(index)
        return dict(image=out["image"], label=np.int32(out["label"]), scan_mask=out["scan_mask"],
                    segmentation=out["segmentation"], index=np.int32(index),
                    **{f"label_{task}": np.int32(v) for task, v in out["labels"].items()})

    def __repr__(self) -> str:
        return (f"SyntheticUltrasoundSource(num_examples={self.num_examples}, seed={self.seed}, "
                f"speckle_seed_offset={self.speckle_seed_offset}, scene={self.scene}, config={self.config})")
