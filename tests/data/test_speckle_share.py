"""The regime measure (data/speckle_share.py): exact on image pairs with a known answer, and on the simulator."""

import numpy as np
import pytest

from configs import base
from usjepa_jax.data import speckle_share as share_lib
from usjepa_jax.data import synthetic


def _tiled(pattern: np.ndarray, tiles: int) -> np.ndarray:
    return np.tile(pattern, (tiles, tiles))


@pytest.mark.parametrize("t", [0.5, 1.0, 2.0])
def test_share_of_a_known_additive_component(t):
    """Two images share an anatomy pattern ``u`` and differ by their own additive component, ``t v`` in one and
    ``t w`` in the other (u, v, w zero-mean and orthogonal in every 4x4 patch, of equal energy): each patch's
    correlation is exactly 1 / (1 + t^2), so the share is the added component's variance share t^2 / (1 + t^2).
    Per-patch offsets and a global gain change nothing (the targets are normalised per patch)."""
    i, j = np.mgrid[0:4, 0:4]
    u, v, w = (-1.0) ** i, (-1.0) ** j, (-1.0) ** (i + j)
    offsets = np.kron(np.arange(16.0).reshape(4, 4), np.ones((4, 4)))  # a different constant in each patch
    a = 100 + offsets + 10 * _tiled(u + t * v, 4)
    b = 3 * (20 + 10 * _tiled(u + t * w, 4))
    expected = t**2 / (1 + t**2)
    np.testing.assert_allclose(share_lib.patch_correlations(a[None], b[None], 4), 1 / (1 + t**2), atol=1e-12)
    assert share_lib.speckle_share(a[None], b[None], 4) == pytest.approx(expected, abs=1e-12)
    assert share_lib.speckle_share(a[None], a[None] + offsets, 4) == pytest.approx(0.0, abs=1e-12)


def test_patches_outside_the_scan_or_flat_do_not_count():
    i, j = np.mgrid[0:4, 0:4]
    a = _tiled((-1.0) ** i, 2)
    b = a.copy()
    b[:4, :4] = (-1.0) ** j  # the top-left patch decorrelated (correlation 0)...
    b[4:, 4:] = 7.0  # ... and the bottom-right one flat: no target
    assert share_lib.patch_correlations(a[None], b[None], 4).tolist() == [0.0, 1.0, 1.0]
    mask = np.ones((1, 8, 8), bool)
    mask[0, 0, 0] = False  # one pixel of the top-left patch outside the scan: the patch is left out
    assert share_lib.speckle_share(a[None], b[None], 4, mask) == 0.0
    with pytest.raises(ValueError, match="no patch"):
        share_lib.speckle_share(a[None], b[None], 4, np.zeros((1, 8, 8), bool))


def test_simulator_share_grows_with_resolution_and_reads_a_config():
    """Speckle is averaged away at a small input: the share at 224 px / patch 16 is far above 64 / 8's."""
    small = share_lib.simulator_speckle_share(64, 64, 8, num_anatomies=4)
    large = share_lib.simulator_speckle_share(224, 224, 16, num_anatomies=4)
    assert 0 < small < 0.3 < 0.45 < large < 1
    c = base.get_config("smoke")  # renders at 64, feeds 48 px to a mu/8 encoder
    got = share_lib.config_speckle_share(c, num_anatomies=4)
    assert got == share_lib.simulator_speckle_share(64, 48, 8, num_anatomies=4)


def test_cli_prints_the_share(capsys):
    synthetic.main(["--speckle-share", "64/8", "--anatomies", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("| 64 / 8 | 64 | 0.")
