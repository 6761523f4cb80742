"""Several datasets in one run, with the paper's balancing.

Each dataset's size per epoch is capped at ``N_t`` (``cap``, 50,000 by default), so dataset ``i`` is sampled with
probability ``P(D_i) = min(|D_i|, N_t) / sum_j min(|D_j|, N_t)`` (:func:`mixture_weights`).

:class:`MixtureSource` realises this as a deterministic random-access source (grain shuffles it, the pipeline
repeats it). One *mixture epoch* is ``L = sum_i min(|D_i|, N_t)`` elements: dataset ``i`` fills a block of
``min(|D_i|, N_t)`` positions. A capped dataset (``|D_i| > N_t``) fills its block of epoch ``e`` with the window
``[e * N_t, (e + 1) * N_t)`` (mod ``|D_i|``) of a fixed seeded permutation of its frames, so successive epochs
see *different* subsets and, over ``|D_i| / N_t`` epochs, every frame once. ``epochs`` (config
``data.mixture_epochs``) is how many such epochs one pass of the source holds: the source has ``epochs * L``
elements and the pipeline's global shuffle mixes them; with ``epochs=1`` a capped dataset shows the same
``N_t`` frames every pass (set it to the run's epoch count to see fresh subsets). Element ``index`` is the
mixture position (unique within a pass).

Kept instead of ``grain.MapDataset.mix(datasets, weights)``: that interleaves whole datasets by weight, with no
cap window that moves through a large dataset epoch by epoch, which is the paper's balancing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from usjepa_jax.data.seeding import derive_seed

DEFAULT_CAP = 50_000


def capped_sizes(sizes: Sequence[int], cap: int | None = DEFAULT_CAP) -> np.ndarray:
    sizes = np.asarray(sizes, np.int64)
    return sizes if not cap else np.minimum(sizes, int(cap))


def mixture_weights(sizes: Sequence[int], cap: int | None = DEFAULT_CAP) -> np.ndarray:
    """``min(|D_i|, cap) / sum_j min(|D_j|, cap)`` (no cap when ``cap`` is None or 0)."""
    capped = capped_sizes(sizes, cap).astype(np.float64)
    if capped.sum() <= 0:
        raise ValueError(f"mixture of empty datasets: sizes {list(sizes)}")
    return capped / capped.sum()


class MixtureSource:
    """Capped, balanced mixture of random-access sources (see the module docstring). Picklable."""

    def __init__(self, sources: Sequence, cap: int | None = DEFAULT_CAP, epochs: int = 1, seed: int = 0):
        if not sources:
            raise ValueError("MixtureSource needs at least one source")
        if epochs < 1:
            raise ValueError(f"epochs={epochs}: expected >= 1")
        self.sources, self.cap, self.epochs, self.seed = list(sources), cap, int(epochs), int(seed)
        self.sizes = np.array([len(s) for s in self.sources], np.int64)
        self.capped = capped_sizes(self.sizes, cap)
        self.epoch_length = int(self.capped.sum())
        if self.epoch_length == 0:
            raise ValueError("MixtureSource: all sources are empty")
        self._ends = np.cumsum(self.capped)
        self._perms: dict[int, np.ndarray] = {}

    @property
    def weights(self) -> np.ndarray:
        return self.capped / self.epoch_length

    @property
    def names(self) -> list[str]:
        return [getattr(s, "name", str(i)) for i, s in enumerate(self.sources)]

    def __len__(self) -> int:
        return self.epoch_length * self.epochs

    def _perm(self, i: int) -> np.ndarray:
        perm = self._perms.get(i)
        if perm is None:
            rng = np.random.default_rng(derive_seed(self.seed, 20, i))
            perm = self._perms[i] = rng.permutation(int(self.sizes[i])).astype(np.int64)
        return perm

    def locate(self, index: int) -> tuple[int, int]:
        """Mixture position -> (dataset number, index inside that dataset)."""
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)}")
        epoch, pos = divmod(index, self.epoch_length)
        i = int(np.searchsorted(self._ends, pos, side="right"))
        j = pos - (int(self._ends[i - 1]) if i else 0)
        n, c = int(self.sizes[i]), int(self.capped[i])
        if n > c:
            return i, int(self._perm(i)[(epoch * c + j) % n])
        return i, j

    def __getitem__(self, index: int) -> dict[str, Any]:
        i, j = self.locate(index)
        return dict(self.sources[i][j], index=np.int32(index % 2**31))

    def provenance(self, index: int) -> dict[str, Any]:
        i, j = self.locate(index)
        return self.sources[i].provenance(j)

    def __getstate__(self):
        return dict(self.__dict__, _perms={})

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}: {s} -> {c}" for n, s, c in zip(self.names, self.sizes, self.capped))
        return f"MixtureSource({parts}; cap={self.cap}, epochs={self.epochs})"


class ConcatSource:
    """The sources one after the other (validation / test: every frame once)."""

    def __init__(self, sources: Sequence):
        self.sources = list(sources)
        self._ends = np.cumsum([len(s) for s in self.sources]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._ends[-1]) if self._ends.size else 0

    def locate(self, index: int) -> tuple[int, int]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)}")
        i = int(np.searchsorted(self._ends, index, side="right"))
        return i, index - (int(self._ends[i - 1]) if i else 0)

    def __getitem__(self, index: int) -> dict[str, Any]:
        i, j = self.locate(index)
        return dict(self.sources[i][j], index=np.int32(index))

    def provenance(self, index: int) -> dict[str, Any]:
        i, j = self.locate(index)
        return self.sources[i].provenance(j)


class SubsetSource:
    """An evenly spaced deterministic subset of ``limit`` elements (caps the validation set at ``num_val``)."""

    def __init__(self, source, limit: int):
        self.source, self.limit = source, min(int(limit), len(source))

    def __len__(self) -> int:
        return self.limit

    def _inner(self, index: int) -> int:
        if not 0 <= index < self.limit:
            raise IndexError(f"index {index} out of range for {self.limit}")
        return int(index) * len(self.source) // self.limit

    def __getitem__(self, index: int) -> dict[str, Any]:
        return dict(self.source[self._inner(int(index))], index=np.int32(index))

    def provenance(self, index: int) -> dict[str, Any]:
        return self.source.provenance(self._inner(int(index)))
