"""A toy method as docs/adding_a_method.md builds one: its target source, its config keys, their checks, and the
registration that makes ``config.method='edges'`` a method, all in this one module (tests/test_targets.py)."""

import jax.numpy as jnp
import ml_collections

from usjepa_jax import config as config_lib
from usjepa_jax import objectives, targets


class Edges(targets.TargetSource):
    """Predict each patch's image-gradient magnitudes (times ``edges.scale``) instead of its pixels."""

    def __init__(self, patch_size: int, config: ml_collections.ConfigDict):
        super().__init__(config.loss)
        self.patch_size, self.width, self.scale = patch_size, patch_size**2, config.edges.scale

    @classmethod
    def from_config(cls, config, encoder):
        return cls(encoder.patch_size, config)

    def targets(self, state, frozen, batch):
        gy, gx = jnp.gradient(batch["image"][..., 0].astype(jnp.float32) / 255.0, axis=(1, 2))
        return self.scale * objectives.patchify(jnp.hypot(gx, gy)[..., None], self.patch_size)


def add_keys(c: ml_collections.ConfigDict) -> None:
    c.edges = ml_collections.ConfigDict(dict(scale=1.0))  # the method's own subtree


def validate(c: ml_collections.ConfigDict) -> None:
    config_lib.check(c.edges.scale > 0, "edges.scale", c.edges.scale, "positive")


METHOD = config_lib.register_method(config_lib.Method("edges", Edges, add_keys, validate))
