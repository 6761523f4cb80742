"""Regenerate the golden timm fixture in ``tests/fixtures/`` (needs torch and timm; the tests do not).

    python scripts/make_timm_fixture.py [--out tests/fixtures]

Writes two tiny timm ``VisionTransformer``s with random weights (every tensor randomised, so that no layer is an
identity and a mapping error cannot hide), as safetensors state dicts, each with a sidecar JSON of the timm model
args and the input normalisation (the format ``python -m usjepa_jax.encoders export`` writes):

- ``vit_cls``: embed 32, depth 2, heads 2, patch 8, img 32, in_chans 3, class token, learned pos_embed (with the
  class position, timm's default ``no_embed_class=False``);
- ``vit_nocls``: the same without class token (``class_token=False, global_pool=''``).

``timm_outputs.npz`` holds a fixed uint8 grayscale batch ``images [2, 32, 32, 1]``, the float input timm saw
(``input [2, 32, 32, 3]`` NHWC: grayscale replicated to 3 channels, then ``(x / 255 - mean) / std``) and each
model's patch tokens ``forward_features(x)[:, num_prefix_tokens:]`` (``tokens_cls``, ``tokens_nocls``
``[2, 16, 32]``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

MEAN = (0.5, 0.45, 0.4)
STD = (0.25, 0.2, 0.3)
BASE_ARGS = {"img_size": 32, "patch_size": 8, "in_chans": 3, "embed_dim": 32, "depth": 2, "num_heads": 2,
             "mlp_ratio": 4.0, "qkv_bias": True, "num_classes": 0, "global_pool": ""}
VARIANTS = {"vit_cls": {"class_token": True}, "vit_nocls": {"class_token": False}}


def randomize(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.state_dict().items():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif name in ("pos_embed", "cls_token"):
                p.copy_(0.5 * noise)
            else:
                p.copy_(0.2 * noise)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests" / "fixtures"))
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 32, 32, 1), dtype=np.uint8)
    x = (np.repeat(images, 3, axis=-1).astype(np.float32) / 255.0 - np.float32(MEAN)) / np.float32(STD)
    x = x.astype(np.float32)
    arrays = {"images": images, "input": x}
    for seed, (name, extra) in enumerate(VARIANTS.items()):
        args = dict(BASE_ARGS, **extra)
        model = VisionTransformer(**args).eval()
        randomize(model, seed)
        with torch.no_grad():
            feats = model.forward_features(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
        arrays[f"tokens_{name.split('_')[1]}"] = feats[:, model.num_prefix_tokens:].numpy()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / f"{name}.safetensors"))
        sidecar = {"architecture": "vision_transformer", "model_args": args,
                   "pretrained_cfg": {"input_size": [3, 32, 32], "mean": list(MEAN), "std": list(STD)},
                   "generator": f"scripts/make_timm_fixture.py (timm {timm.__version__}, torch {torch.__version__})"}
        (out / f"{name}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    np.savez(out / "timm_outputs.npz", **arrays)
    print(f"wrote {sorted(p.name for p in out.iterdir())} to {out}")


if __name__ == "__main__":
    main()
