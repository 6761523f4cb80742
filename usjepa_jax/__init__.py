"""usjepa_jax: US-JEPA (latent prediction against a frozen teacher) for ultrasound, in JAX/Flax."""

__version__ = "0.1.0"
