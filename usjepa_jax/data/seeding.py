"""Seeds of every random draw of the data: one integer per (seed, index, stream) tuple, the same on every machine.

Each consumer (the simulator's anatomy and speckle, the pipeline's shuffle and augmentations, mixtures of datasets,
the evaluation tasks) derives its own ``np.random.Generator`` from ``derive_seed(seed, ..., stream)`` with its own
stream numbers, so no draw depends on a global RNG, a thread, or the order in which others draw.
"""

from __future__ import annotations

import numpy as np


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (e.g. ``(seed, index, stream)``), identical on every machine."""
    return int(np.random.SeedSequence([int(p) % 2**63 for p in parts]).generate_state(1, np.uint64)[0] >> 1)
