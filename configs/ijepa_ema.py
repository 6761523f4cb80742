"""The I-JEPA baseline: the teacher is an EMA of the student's encoder (momentum 0.996 -> 1.0), same masks.

Run:    python -m usjepa_jax.main --config=configs/ijepa_ema.py --workdir=/tmp/ijepa_base
Smoke:  python -m usjepa_jax.main --config=configs/ijepa_ema.py:smoke --workdir=/tmp/ijepa_smoke

Same data, model and schedule as configs/base.py; there is no stage 1 (no frozen teacher).
"""

from usjepa_jax import config as config_lib

base = config_lib.sibling_config(__file__, "base")


def get_config(arg: str | None = None):
    c = base.get_config(arg)
    c.method = "ijepa"
    return c
