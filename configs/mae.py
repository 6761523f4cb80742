"""The pixel-reconstruction baseline (MAE-style, per-patch normalised pixels at the target blocks, same masks).

Run:    python -m usjepa_jax.main --config=configs/mae.py --workdir=/tmp/mae_base
Smoke:  python -m usjepa_jax.main --config=configs/mae.py:smoke --workdir=/tmp/mae_smoke

This is also exactly SALT's stage 1 (what `configs/base.py` trains its teacher with), run here for the student.
The decoder is the light predictor of `teacher.decoder`.
"""

from usjepa_jax import config as config_lib

base = config_lib.sibling_config(__file__, "base")


def get_config(arg: str | None = None):
    c = base.get_config(arg)
    c.method = "pixel"
    c.predictor = c.teacher.decoder
    return c
