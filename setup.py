"""Package layout only (metadata and dependencies: pyproject.toml).

The experiment configs live in the checkout's ``configs/`` (commands say ``--config=configs/base.py``) and ship
inside the package as ``usjepa_jax.configs``, so an installed package has them too:
``python -m usjepa_jax.main --config="$(python -c 'import usjepa_jax.configs as c; print(c.__path__[0])')/base.py"``.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["usjepa_jax", "usjepa_jax.*"]) + ["usjepa_jax.configs"],
    package_dir={"usjepa_jax.configs": "configs"},
)
