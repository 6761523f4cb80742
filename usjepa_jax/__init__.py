"""usjepa_jax: US-JEPA (latent prediction against a frozen teacher) for ultrasound, in JAX/Flax."""

import importlib
from types import ModuleType

__version__ = "0.1.0"


def require(module: str, extra: str, needed_for: str) -> ModuleType:
    """Import an optional dependency, or fail saying which extra of the package installs it (pyproject.toml)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{needed_for} needs the Python package '{module.split('.')[0]}', which is not "
                          f"installed: pip install 'usjepa_jax[{extra}]' (in a checkout: pip install -e "
                          f"'.[{extra}]'; requirements.txt has it too).") from err
