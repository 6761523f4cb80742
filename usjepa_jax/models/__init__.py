"""Models: the ViT encoder (variant table) and the predictor / pixel decoder."""

from usjepa_jax.models.predictor import Predictor
from usjepa_jax.models.vit import VARIANTS, VisionTransformer, parse_variant, sincos_posemb_2d, vit_from_variant

__all__ = ["VARIANTS", "Predictor", "VisionTransformer", "parse_variant", "sincos_posemb_2d", "vit_from_variant"]
