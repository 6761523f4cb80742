"""SALT's stage 1 of `configs/base.py` as a run of its own: the pixel-reconstruction teacher alone.

Run:    python -m usjepa_jax.main --config=configs/salt_teacher.py --workdir=/tmp/salt_teacher
        ... --config.loss.pixel_target=lowpass      (or hog: the teacher options, docs/teachers.md)
Smoke:  python -m usjepa_jax.main --config=configs/salt_teacher.py:smoke --workdir=/tmp/salt_teacher_smoke

Exactly the run `configs/base.py` makes in `<workdir>/teacher` (`config.stage1_config`): the teacher's encoder,
decoder and optimisation, the same data and masks. Used to compare teacher options over pretraining seeds without
training a student on each (`experiments/sweep.py --method=NAME=configs/salt_teacher.py`); its exported encoder
is a teacher for `configs/base.py --config.teacher.checkpoint=<workdir>/encoder`.
"""

from usjepa_jax import config as config_lib

base = config_lib.sibling_config(__file__, "base")


def get_config(arg: str | None = None):
    return config_lib.stage1_config(base.get_config(arg))
